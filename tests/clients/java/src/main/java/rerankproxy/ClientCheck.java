package rerankproxy;

import co.elastic.clients.elasticsearch.ElasticsearchClient;
import co.elastic.clients.elasticsearch._types.Refresh;
import co.elastic.clients.elasticsearch._types.query_dsl.Query;
import co.elastic.clients.elasticsearch.core.BulkResponse;
import co.elastic.clients.elasticsearch.core.GetResponse;
import co.elastic.clients.elasticsearch.core.IndexResponse;
import co.elastic.clients.elasticsearch.core.MsearchResponse;
import co.elastic.clients.elasticsearch.core.SearchResponse;
import co.elastic.clients.elasticsearch.core.search.Hit;
import co.elastic.clients.json.jackson.JacksonJsonpMapper;
import co.elastic.clients.transport.rest_client.RestClientTransport;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.http.Header;
import org.apache.http.HttpHost;
import org.apache.http.HttpResponseInterceptor;
import org.elasticsearch.client.RestClient;

/**
 * Drives rerank-proxy with the official Java client and prints what it saw as one JSON object.
 *
 * <p>Usage: {@code java -jar esclient.jar PROXY_URL INDEX QUERY SCRATCH_INDEX}
 */
public final class ClientCheck {
    private static final ObjectMapper JSON = new ObjectMapper();

    private ClientCheck() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            throw new IllegalArgumentException("usage: ClientCheck PROXY_URL INDEX QUERY SCRATCH_INDEX");
        }
        String url = args[0], index = args[1], query = args[2], scratch = args[3];
        // The typed API returns only the decoded body; the status header is read off the HTTP client underneath.
        AtomicReference<String> status = new AtomicReference<>();
        HttpResponseInterceptor recordStatus = (response, context) -> {
            Header header = response.getFirstHeader("X-Rerank-Status");
            status.set(header == null ? null : header.getValue());
        };
        try (RestClient rest = RestClient.builder(HttpHost.create(url))
                .setHttpClientConfigCallback(http -> http.addInterceptorLast(recordStatus))
                .build()) {
            ElasticsearchClient client = new ElasticsearchClient(new RestClientTransport(rest, new JacksonJsonpMapper()));
            Map<String, Object> out = new LinkedHashMap<>();

            out.put("reranked", result(search(client, index, match(query), 10), status.get()));
            ElasticsearchClient off = client.withTransportOptions(
                    client._transport().options().with(o -> o.addHeader("X-Rerank", "off")));
            out.put("off", result(search(off, index, match(query), 10), status.get()));

            ElasticsearchClient explaining = client.withTransportOptions(
                    client._transport().options().with(o -> o.addHeader("X-Rerank-Explain", "true")));
            List<Map<String, Object>> explained = new ArrayList<>();
            for (Hit<ObjectNode> hit : search(explaining, index, match(query), 3).hits().hits()) {
                explained.add(Map.of(
                        "id", hit.id(), "score", hit.score(),
                        "rerank_score", hit.fields().get("_rerank.score").to(double[].class)[0],
                        "cluster_rank", hit.fields().get("_rerank.cluster_rank").to(int[].class)[0],
                        "cluster_score", hit.fields().get("_rerank.cluster_score").to(double[].class)[0]));
            }
            out.put("explain", explained);

            MsearchResponse<ObjectNode> multi = client.msearch(m -> m
                    .searches(s -> s.header(h -> h.index(index)).body(b -> b.query(match(query)).size(10)))
                    .searches(s -> s.header(h -> h.index(index))
                            .body(b -> b.query(match("smoking and lung cancer risk")).size(10))),
                    ObjectNode.class);
            List<List<String>> multiIds = new ArrayList<>();
            multi.responses().forEach(item -> multiIds.add(ids(item.result().hits().hits())));
            out.put("msearch", multiIds);
            out.put("msearch_status", status.get());

            out.put("passthrough", passthrough(client, scratch));
            System.out.println(JSON.writeValueAsString(out));
        }
    }

    private static Query match(String text) {
        return Query.of(q -> q.match(m -> m.field("text").query(text)));
    }

    private static SearchResponse<ObjectNode> search(ElasticsearchClient client, String index, Query query, int size)
            throws Exception {
        return client.search(s -> s.index(index).query(query).size(size), ObjectNode.class);
    }

    private static List<String> ids(List<Hit<ObjectNode>> hits) {
        return hits.stream().map(Hit::id).toList();
    }

    private static Map<String, Object> result(SearchResponse<ObjectNode> response, String status) {
        return Map.of("ids", ids(response.hits().hits()), "status", status);
    }

    /** Document and index APIs that the proxy must forward untouched. */
    private static Map<String, Object> passthrough(ElasticsearchClient client, String scratch) throws Exception {
        Map<String, String> doc = Map.of("title", "scratch", "text", "a small document");
        IndexResponse indexed = client.index(i -> i.index(scratch).id("1").document(doc).refresh(Refresh.True));
        GetResponse<ObjectNode> got = client.get(g -> g.index(scratch).id("1"), ObjectNode.class);
        BulkResponse bulk = client.bulk(b -> b.index(scratch).refresh(Refresh.True)
                .operations(op -> op.index(i -> i.id("2").document(doc)))
                .operations(op -> op.delete(d -> d.id("1"))));
        long count = client.count(c -> c.index(scratch)).count();
        boolean deleted = client.indices().delete(d -> d.index(scratch)).acknowledged();
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("index_result", indexed.result().jsonValue());
        out.put("get_found", got.found());
        out.put("get_source", got.source());
        out.put("bulk_errors", bulk.errors());
        out.put("bulk_items", bulk.items().size());
        out.put("count_after_bulk", count);
        out.put("index_deleted", deleted);
        return out;
    }
}
