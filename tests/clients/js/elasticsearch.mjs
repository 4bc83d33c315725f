// Drives rerank-proxy with the official JavaScript client and prints what it saw as one JSON object.
//
// Usage: node elasticsearch.mjs PROXY_URL INDEX QUERY SCRATCH_INDEX
import { Client } from '@elastic/elasticsearch'

const [url, index, query, scratch] = process.argv.slice(2)
if (!scratch) throw new Error('usage: node elasticsearch.mjs PROXY_URL INDEX QUERY SCRATCH_INDEX')

const client = new Client({ node: url, requestTimeout: 120_000 })
const match = (text) => ({ match: { text: { query: text } } })
const ids = (response) => response.hits.hits.map((hit) => hit._id)

// `meta: true` returns the HTTP response (status, headers) around the body.
async function search (headers, size = 10) {
  const { body, headers: got } = await client.search({ index, query: match(query), size }, { meta: true, headers })
  return { body, status: got['x-rerank-status'] }
}

const reranked = await search({})
const off = await search({ 'X-Rerank': 'off' })
const explained = await search({ 'X-Rerank-Explain': 'true' }, 3)

const multi = await client.msearch({
  searches: [{ index }, { query: match(query), size: 10 }, { index }, { query: match('smoking and lung cancer risk'), size: 10 }]
}, { meta: true })

const doc = { title: 'scratch', text: 'a small document' }
const indexed = await client.index({ index: scratch, id: '1', document: doc, refresh: true })
const got = await client.get({ index: scratch, id: '1' })
const bulk = await client.bulk({ index: scratch, refresh: true, operations: [{ index: { _id: '2' } }, doc, { delete: { _id: '1' } }] })
const count = await client.count({ index: scratch })
const deleted = await client.indices.delete({ index: scratch })

console.log(JSON.stringify({
  reranked: { ids: ids(reranked.body), status: reranked.status },
  off: { ids: ids(off.body), status: off.status },
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
    index_result: indexed.result,
    get_found: got.found,
    get_source: got._source,
    bulk_errors: bulk.errors,
    bulk_items: bulk.items.length,
    count_after_bulk: count.count,
    index_deleted: deleted.acknowledged
  }
}))
await client.close()
