// Drives rerank-proxy with the official OpenSearch Go client and prints what it saw as one JSON object,
// in the same shape as ../elasticsearch.
//
// Usage: opensearch PROXY_URL INDEX QUERY SCRATCH_INDEX
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/opensearch-project/opensearch-go/v4"
	"github.com/opensearch-project/opensearch-go/v4/opensearchapi"
)

type searchResult struct {
	IDs    []string `json:"ids"`
	Status string   `json:"status"`
}

type explained struct {
	ID           string  `json:"id"`
	Score        float32 `json:"score"`
	RerankScore  float64 `json:"rerank_score"`
	ClusterRank  int     `json:"cluster_rank"`
	ClusterScore float64 `json:"cluster_score"`
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func check[T any](value T, err error) T {
	if err != nil {
		fail(err)
	}
	return value
}

func body(value any) *bytes.Reader {
	return bytes.NewReader(check(json.Marshal(value)))
}

func ids(hits []opensearchapi.SearchHit) []string {
	out := make([]string, 0, len(hits))
	for _, h := range hits {
		out = append(out, h.ID)
	}
	return out
}

func match(query string) map[string]any {
	return map[string]any{"match": map[string]any{"text": map[string]any{"query": query}}}
}

func main() {
	if len(os.Args) != 5 {
		fail(fmt.Errorf("usage: %s PROXY_URL INDEX QUERY SCRATCH_INDEX", os.Args[0]))
	}
	url, index, query, scratch := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	client := check(opensearchapi.NewClient(opensearchapi.Config{Client: opensearch.Config{Addresses: []string{url}}}))
	ctx := context.Background()
	search := func(header http.Header, size int) *opensearchapi.SearchResp {
		request := map[string]any{"query": match(query), "size": size}
		return check(client.Search(ctx, &opensearchapi.SearchReq{Indices: []string{index}, Body: body(request), Header: header}))
	}
	status := func(res *opensearch.Response) string { return res.Header.Get("X-Rerank-Status") }
	out := map[string]any{}

	reranked := search(nil, 10)
	out["reranked"] = searchResult{ids(reranked.Hits.Hits), status(reranked.Inspect().Response)}
	off := search(http.Header{"X-Rerank": {"off"}}, 10)
	out["off"] = searchResult{ids(off.Hits.Hits), status(off.Inspect().Response)}

	var details []explained
	for _, hit := range search(http.Header{"X-Rerank-Explain": {"true"}}, 3).Hits.Hits {
		var fields map[string][]float64
		if err := json.Unmarshal(hit.Fields, &fields); err != nil {
			fail(fmt.Errorf("hit %s fields: %w", hit.ID, err))
		}
		details = append(details, explained{
			hit.ID, hit.Score, fields["_rerank.score"][0], int(fields["_rerank.cluster_rank"][0]), fields["_rerank.cluster_score"][0],
		})
	}
	out["explain"] = details

	var lines strings.Builder
	for _, q := range []string{query, "smoking and lung cancer risk"} {
		lines.WriteString(`{"index":"` + index + `"}` + "\n")
		lines.Write(check(json.Marshal(map[string]any{"query": match(q), "size": 10})))
		lines.WriteString("\n")
	}
	multi := check(client.MSearch(ctx, opensearchapi.MSearchReq{Body: strings.NewReader(lines.String())}))
	var multiIDs [][]string
	for _, item := range multi.Responses {
		multiIDs = append(multiIDs, ids(item.Hits.Hits))
	}
	out["msearch"] = multiIDs
	out["msearch_status"] = status(multi.Inspect().Response)

	out["passthrough"] = passthrough(ctx, client, scratch)
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail(err)
	}
}

// passthrough runs document and index APIs that the proxy must forward untouched.
func passthrough(ctx context.Context, client *opensearchapi.Client, scratch string) map[string]any {
	doc := map[string]string{"title": "scratch", "text": "a small document"}
	indexed := check(client.Index(ctx, opensearchapi.IndexReq{Index: scratch, DocumentID: "1", Body: body(doc),
		Params: opensearchapi.IndexParams{Refresh: "true"}}))
	got := check(client.Document.Get(ctx, opensearchapi.DocumentGetReq{Index: scratch, DocumentID: "1"}))
	ops := `{"index":{"_id":"2"}}` + "\n" + string(check(json.Marshal(doc))) + "\n" + `{"delete":{"_id":"1"}}` + "\n"
	bulk := check(client.Bulk(ctx, opensearchapi.BulkReq{Index: scratch, Body: strings.NewReader(ops),
		Params: opensearchapi.BulkParams{Refresh: "true"}}))
	count := check(client.Indices.Count(ctx, &opensearchapi.IndicesCountReq{Indices: []string{scratch}}))
	deleted := check(client.Indices.Delete(ctx, opensearchapi.IndicesDeleteReq{Indices: []string{scratch}}))
	var source map[string]string
	if err := json.Unmarshal(got.Source, &source); err != nil {
		fail(err)
	}
	return map[string]any{
		"index_result": indexed.Result, "get_found": got.Found, "get_source": source,
		"bulk_errors": bulk.Errors, "bulk_items": len(bulk.Items), "count_after_bulk": count.Count,
		"index_deleted": deleted.Acknowledged,
	}
}
