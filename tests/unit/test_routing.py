import pytest

from proxy.routing import Kind, classify


@pytest.mark.parametrize(
    "method,path,kind,index",
    [
        ("GET", "/_search", Kind.SEARCH, None),
        ("POST", "/products/_search", Kind.SEARCH, "products"),
        ("POST", "/a%2Cb/_search", Kind.SEARCH, "a,b"),
        ("POST", "/logs-*/_search", Kind.SEARCH, "logs-*"),
        ("POST", "/_msearch", Kind.MSEARCH, None),
        ("GET", "/idx/_msearch", Kind.MSEARCH, "idx"),
        ("POST", "/_search/template", Kind.SEARCH_TEMPLATE, None),
        ("POST", "/idx/_search/template", Kind.SEARCH_TEMPLATE, "idx"),
        ("POST", "/idx/_msearch/template", Kind.MSEARCH_TEMPLATE, "idx"),
    ],
)
def test_searches_are_recognised_with_their_index(method, path, kind, index):
    route = classify(method, path)
    assert (route.kind, route.index) == (kind, index)


@pytest.mark.parametrize(
    "method,path",
    [
        ("PUT", "/idx/_search"),
        ("DELETE", "/_search/scroll"),
        ("POST", "/_search/scroll"),
        ("GET", "/idx/_count"),
        ("POST", "/_bulk"),
        ("GET", "/idx/_doc/_search"),
        ("GET", "/"),
        ("POST", "/_render/template"),
        ("POST", "/idx/_search/template/extra"),
    ],
)
def test_everything_else_passes_through(method, path):
    assert classify(method, path).kind is Kind.PASSTHROUGH
