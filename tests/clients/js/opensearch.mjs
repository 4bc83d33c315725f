// Drives rerank-proxy with the official OpenSearch JavaScript client and prints what it saw as one JSON object,
// in the same shape as elasticsearch.mjs.
//
// Usage: node opensearch.mjs PROXY_URL INDEX QUERY SCRATCH_INDEX
import { Client } from '@opensearch-project/opensearch'

const [url, index, query, scratch] = process.argv.slice(2)
if (!scratch) throw new Error('usage: node opensearch.mjs PROXY_URL INDEX QUERY SCRATCH_INDEX')

const client = new Client({ node: url, requestTimeout: 120_000 })
const match = (text) => ({ match: { text: { query: text } } })
const ids = (body) => body.hits.hits.map((hit) => hit._id)

// Every call resolves to the HTTP response: { body, statusCode, headers }.
const search = (headers, size = 10) => client.search({ index, body: { query: match(query), size } }, { headers })

const reranked = await search({})
const off = await search({ 'X-Rerank': 'off' })
const explained = await search({ 'X-Rerank-Explain': 'true' }, 3)

const multi = await client.msearch({
  body: [{ index }, { query: match(query), size: 10 }, { index }, { query: match('smoking and lung cancer risk'), size: 10 }]
})

const doc = { title: 'scratch', text: 'a small document' }
const indexed = await client.index({ index: scratch, id: '1', body: doc, refresh: true })
const got = await client.get({ index: scratch, id: '1' })
const bulk = await client.bulk({ index: scratch, refresh: true, body: [{ index: { _id: '2' } }, doc, { delete: { _id: '1' } }] })
const count = await client.count({ index: scratch })
const deleted = await client.indices.delete({ index: scratch })

console.log(JSON.stringify({
  reranked: { ids: ids(reranked.body), status: reranked.headers['x-rerank-status'] },
  off: { ids: ids(off.body), status: off.headers['x-rerank-status'] },
  explain: explained.body.hits.hits.map((hit) => ({
    id: hit._id,
    score: hit._score,
    rerank_score: hit.fields['_rerank.score'][0],
    cluster_rank: hit.fields['_rerank.cluster_rank'][0],
    cluster_score: hit.fields['_rerank.cluster_score'][0]
  })),
  msearch: multi.body.responses.map(ids),
  msearch_status: multi.headers['x-rerank-status'],
  passthrough: {
    index_result: indexed.body.result,
    get_found: got.body.found,
    get_source: got.body._source,
    bulk_errors: bulk.body.errors,
    bulk_items: bulk.body.items.length,
    count_after_bulk: count.body.count,
    index_deleted: deleted.body.acknowledged
  }
}))
await client.close()
