// Drives rerank-proxy with the official Go client (typed API) and prints what it saw as one JSON object.
//
// Usage: elasticsearch PROXY_URL INDEX QUERY SCRATCH_INDEX
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sync"

	"github.com/elastic/go-elasticsearch/v8"
	"github.com/elastic/go-elasticsearch/v8/typedapi/some"
	"github.com/elastic/go-elasticsearch/v8/typedapi/types"
	"github.com/elastic/go-elasticsearch/v8/typedapi/types/enums/refresh"
)

// statusRecorder keeps the X-Rerank-Status of the last response: the typed API returns only the decoded body.
type statusRecorder struct {
	mu   sync.Mutex
	last string
}

func (s *statusRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	res, err := http.DefaultTransport.RoundTrip(req)
	if err == nil {
		s.mu.Lock()
		s.last = res.Header.Get("X-Rerank-Status")
		s.mu.Unlock()
	}
	return res, err
}

func (s *statusRecorder) Last() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

type searchResult struct {
	IDs    []string `json:"ids"`
	Status string   `json:"status"`
}

type explained struct {
	ID           string  `json:"id"`
	Score        float64 `json:"score"`
	RerankScore  float64 `json:"rerank_score"`
	ClusterRank  int     `json:"cluster_rank"`
	ClusterScore float64 `json:"cluster_score"`
}

func ids(hits []types.Hit) []string {
	out := make([]string, 0, len(hits))
	for _, h := range hits {
		out = append(out, *h.Id_)
	}
	return out
}

func field[T any](hit types.Hit, name string) T {
	var values []T
	if err := json.Unmarshal(hit.Fields[name], &values); err != nil || len(values) != 1 {
		fail(fmt.Errorf("hit %s: field %s: %v %v", *hit.Id_, name, values, err))
	}
	return values[0]
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func must(err error) {
	if err != nil {
		fail(err)
	}
}

func check[T any](value T, err error) T {
	if err != nil {
		fail(err)
	}
	return value
}

func main() {
	if len(os.Args) != 5 {
		fail(fmt.Errorf("usage: %s PROXY_URL INDEX QUERY SCRATCH_INDEX", os.Args[0]))
	}
	url, index, query, scratch := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	recorder := &statusRecorder{}
	es := check(elasticsearch.NewTypedClient(elasticsearch.Config{Addresses: []string{url}, Transport: recorder}))
	ctx := context.Background()
	match := &types.Query{Match: map[string]types.MatchQuery{"text": {Query: query}}}
	out := map[string]any{}

	reranked := check(es.Search().Index(index).Query(match).Size(10).Do(ctx))
	out["reranked"] = searchResult{ids(reranked.Hits.Hits), recorder.Last()}

	off := check(es.Search().Index(index).Query(match).Size(10).Header("X-Rerank", "off").Do(ctx))
	out["off"] = searchResult{ids(off.Hits.Hits), recorder.Last()}

	withExplain := check(es.Search().Index(index).Query(match).Size(3).Header("X-Rerank-Explain", "true").Do(ctx))
	var details []explained
	for _, hit := range withExplain.Hits.Hits {
		details = append(details, explained{
			*hit.Id_, float64(*hit.Score_), field[float64](hit, "_rerank.score"),
			field[int](hit, "_rerank.cluster_rank"), field[float64](hit, "_rerank.cluster_score"),
		})
	}
	out["explain"] = details

	other := &types.Query{Match: map[string]types.MatchQuery{"text": {Query: "smoking and lung cancer risk"}}}
	out["msearch"] = msearch(ctx, es, index, match, other)
	out["msearch_status"] = recorder.Last()

	out["passthrough"] = passthrough(ctx, es, scratch)
	must(json.NewEncoder(os.Stdout).Encode(out))
}

func msearch(ctx context.Context, es *elasticsearch.TypedClient, index string, queries ...*types.Query) [][]string {
	var body []types.MsearchRequestItem
	for _, q := range queries {
		body = append(body, types.MultisearchHeader{Index: []string{index}}, types.MultisearchBody{Query: q, Size: some.Int(10)})
	}
	res := check(es.Msearch().Request(&body).Do(ctx))
	var out [][]string
	for _, item := range res.Responses {
		result, ok := item.(*types.MultiSearchItem)
		if !ok {
			fail(fmt.Errorf("msearch item is %T: %+v", item, item))
		}
		out = append(out, ids(result.Hits.Hits))
	}
	return out
}

// passthrough runs document and index APIs that the proxy must forward untouched.
func passthrough(ctx context.Context, es *elasticsearch.TypedClient, scratch string) map[string]any {
	doc := map[string]string{"title": "scratch", "text": "a small document"}
	indexed := check(es.Index(scratch).Id("1").Document(doc).Refresh(refresh.True).Do(ctx))
	got := check(es.Get(scratch, "1").Do(ctx))
	bulk := es.Bulk().Index(scratch).Refresh(refresh.True)
	must(bulk.IndexOp(types.IndexOperation{Id_: some.String("2")}, doc))
	must(bulk.DeleteOp(types.DeleteOperation{Id_: some.String("1")}))
	bulked := check(bulk.Do(ctx))
	count := check(es.Count().Index(scratch).Do(ctx))
	deleted := check(es.Indices.Delete(scratch).Do(ctx))
	var source map[string]string
	must(json.Unmarshal(got.Source_, &source))
	return map[string]any{
		"index_result": indexed.Result.String(), "get_found": got.Found, "get_source": source,
		"bulk_errors": bulked.Errors, "bulk_items": len(bulked.Items), "count_after_bulk": count.Count,
		"index_deleted": deleted.Acknowledged,
	}
}
