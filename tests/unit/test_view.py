"""The client's view of a search response: `_source` filtering and `filter_path`.

Every expectation below is what a real Elasticsearch 8.19.7 node returned for the same document or response and
the same request (recorded once; these tests need no cluster), and likewise for OpenSearch 2.19.6 at the end. `took`
was set to 0 in the recorded responses.
"""
from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.view import SourceFilter, apply_filter_path, filter_source, source_filter_from_request

ABSENT = "ABSENT"  # the hit has no `_source` key at all


def assert_exact(actual: Any, expected: Any) -> None:
    """Same content and the same key order (the client sees the serialised bytes)."""
    assert actual == expected
    assert json.dumps(actual, ensure_ascii=False) == json.dumps(expected, ensure_ascii=False)


# ---- _source ----

NESTED = {"title": "alpha", "meta": {"author": {"name": "ann", "age": 30}, "tags": ["x", "y"]}, "n": 1}
ARRAYS = {"items": [{"name": "i1", "price": 1}, {"name": "i2"}, "loose", 5, {}],
          "deep": [[{"a": 1}], [{"a": 2, "b": 3}], []]}
EMPTIES = {"keep": 1, "emptyobj": {}, "emptyarr": [], "obj": {"only": 1}, "z": None}
DOTTED = {"a.b.c": 7, "a": {"b": {"d": 8}}, "ab": {"c": 1}, "abc": 2, "xa": {"c": 3}}
MANY = {**{f"field_{i}": i for i in range(14)}, "título": 1, "名前": 2, "emoji😀": 3,
        "obj": {"inner_b": 1, "inner_a": 2, "x": 0}}
WIDE = {"title": "t", "n": 1, "meta": {"author": {"name": "ann", "age": 30}, "tags": ["x"]},
        "items": [{"name": "i1", "price": 1}, {}], "emptyobj": {}}

# (document, body `_source`, URL params, other body keys, the hit's `_source` as the cluster returned it)
SOURCE_CASES = [
    pytest.param(
        NESTED, ['meta.author.name'], None, None,
        {'meta': {'author': {'name': 'ann'}}},
        id='include_keeps_path_to_nested_field',
    ),
    pytest.param(
        NESTED, ['meta'], None, None,
        {'meta': {'author': {'name': 'ann', 'age': 30}, 'tags': ['x', 'y']}},
        id='include_of_object_keeps_whole_object',
    ),
    pytest.param(
        NESTED, ['nope'], None, None,
        {},
        id='include_of_missing_field_gives_empty_source',
    ),
    pytest.param(
        NESTED, ['title.x'], None, None,
        {},
        id='include_of_scalar_with_subpath_matches_nothing',
    ),
    pytest.param(
        NESTED, ['n', 'title'], None, None,
        {'title': 'alpha', 'n': 1},
        id='include_order_follows_document_not_request',
    ),
    pytest.param(
        NESTED, ['meta.*.name'], None, None,
        {'meta': {'author': {'name': 'ann'}}},
        id='include_star_within_one_name',
    ),
    pytest.param(
        DOTTED, ['a*'], None, None,
        {'a.b.c': 7, 'a': {'b': {'d': 8}}, 'ab': {'c': 1}, 'abc': 2},
        id='include_prefix_star',
    ),
    pytest.param(
        DOTTED, ['a*c'], None, None,
        {'abc': 2},
        id='include_star_does_not_cross_dots',
    ),
    pytest.param(
        DOTTED, ['**.c'], None, None,
        {'a.b.c': 7, 'ab': {'c': 1}, 'xa': {'c': 3}},
        id='include_double_star_any_depth',
    ),
    pytest.param(
        DOTTED, ['a.b'], None, None,
        {'a.b.c': 7, 'a': {'b': {'d': 8}}},
        id='include_dotted_name_matches_literal_dotted_key_and_objects',
    ),
    pytest.param(
        DOTTED, ['a.b.c'], None, None,
        {'a.b.c': 7},
        id='include_full_dotted_path_matches_dotted_key',
    ),
    pytest.param(
        DOTTED, ['a\\.b\\.c'], None, None,
        {},
        id='include_escaped_dot_never_matches_in_source',
    ),
    pytest.param(
        ARRAYS, ['items.name'], None, None,
        {'items': [{'name': 'i1'}, {'name': 'i2'}]},
        id='include_filters_array_elements',
    ),
    pytest.param(
        ARRAYS, ['deep.a'], None, None,
        {'deep': [[{'a': 1}], [{'a': 2}]]},
        id='include_in_nested_arrays',
    ),
    pytest.param(
        ARRAYS, ['items'], None, None,
        {'items': [{'name': 'i1', 'price': 1}, {'name': 'i2'}, 'loose', 5, {}]},
        id='include_of_array_keeps_it_whole',
    ),
    pytest.param(
        EMPTIES, ['emptyobj', 'emptyarr'], None, None,
        {'emptyobj': {}, 'emptyarr': []},
        id='include_keeps_empty_object_and_array_when_matched',
    ),
    pytest.param(
        EMPTIES, ['z'], None, None,
        {'z': None},
        id='include_keeps_null',
    ),
    pytest.param(
        EMPTIES, ['emptyobj.x', 'obj.only'], None, None,
        {'obj': {'only': 1}},
        id='include_below_empty_object_drops_it',
    ),
    pytest.param(
        NESTED, [''], None, None,
        {},
        id='include_blank_pattern_matches_nothing',
    ),
    pytest.param(
        NESTED, [' title '], None, None,
        {'title': 'alpha'},
        id='include_patterns_are_trimmed',
    ),
    pytest.param(
        NESTED, {'excludes': ['meta.author.name']}, None, None,
        {'title': 'alpha', 'meta': {'author': {'age': 30}, 'tags': ['x', 'y']}, 'n': 1},
        id='exclude_removes_field',
    ),
    pytest.param(
        NESTED, {'excludes': ['meta.author.name', 'meta.author.age']}, None, None,
        {'title': 'alpha', 'meta': {'tags': ['x', 'y']}, 'n': 1},
        id='exclude_drops_object_it_empties',
    ),
    pytest.param(
        EMPTIES, {'excludes': ['emptyobj.x', 'emptyarr.x', 'obj.only']}, None, None,
        {'keep': 1, 'emptyobj': {}, 'emptyarr': [], 'z': None},
        id='exclude_keeps_objects_and_arrays_that_were_empty',
    ),
    pytest.param(
        ARRAYS, {'excludes': ['items.name']}, None, None,
        {'items': [{'price': 1}, 'loose', 5, {}], 'deep': [[{'a': 1}], [{'a': 2, 'b': 3}], []]},
        id='exclude_in_array_elements_keeps_scalars_and_empty_elements',
    ),
    pytest.param(
        ARRAYS, {'excludes': ['deep.a']}, None, None,
        {'items': [{'name': 'i1', 'price': 1}, {'name': 'i2'}, 'loose', 5, {}], 'deep': [[{'b': 3}], []]},
        id='exclude_drops_array_it_empties',
    ),
    pytest.param(
        DOTTED, {'excludes': ['a.b']}, None, None,
        {'ab': {'c': 1}, 'abc': 2, 'xa': {'c': 3}},
        id='exclude_dotted_name_removes_dotted_key_and_object',
    ),
    pytest.param(
        DOTTED, {'excludes': ['**.c']}, None, None,
        {'a': {'b': {'d': 8}}, 'ab': {}, 'abc': 2, 'xa': {}},
        id='wildcard_exclude_double_star_keeps_emptied_objects',
    ),
    pytest.param(
        NESTED, {'includes': ['meta'], 'excludes': ['meta.tags']}, None, None,
        {'meta': {'author': {'name': 'ann', 'age': 30}}},
        id='exclude_wins_over_include',
    ),
    pytest.param(
        NESTED, {'includes': ['meta.author'], 'excludes': ['meta.author.name', 'meta.author.age']}, None, None,
        {},
        id='exclude_of_included_object_drops_it',
    ),
    pytest.param(
        NESTED, {'include': 'meta', 'exclude': 'meta.tags'}, None, None,
        {'meta': {'author': {'name': 'ann', 'age': 30}}},
        id='singular_include_exclude_keys',
    ),
    pytest.param(
        WIDE, {'excludes': ['*.age']}, None, None,
        {'emptyobj': {},
         'meta': {'author': {'name': 'ann'}, 'tags': ['x']},
         'title': 't',
         'items': [{'price': 1, 'name': 'i1'}],
         'n': 1},
        id='wildcard_exclude_uses_map_filter_hash_order',
    ),
    pytest.param(
        NESTED, {'excludes': ['meta.author.*']}, None, None,
        {'meta': {'author': {}, 'tags': ['x', 'y']}, 'title': 'alpha', 'n': 1},
        id='wildcard_exclude_keeps_emptied_object',
    ),
    pytest.param(
        ARRAYS, {'excludes': ['items.*']}, None, None,
        {'deep': [[{'a': 1}], [{'a': 2, 'b': 3}], []], 'items': ['loose', 5]},
        id='wildcard_exclude_drops_emptied_array_elements',
    ),
    pytest.param(
        DOTTED, {'excludes': ['a*c']}, None, None,
        {'a': {'b': {'d': 8}}, 'ab': {}, 'xa': {'c': 3}},
        id='wildcard_exclude_star_crosses_dots',
    ),
    pytest.param(
        NESTED, {'includes': ['meta.author'], 'excludes': ['meta.author.*']}, None, None,
        {'meta': {'author': {}}},
        id='wildcard_exclude_with_include_keeps_matched_emptied_object',
    ),
    pytest.param(
        DOTTED, {'includes': ['a*c'], 'excludes': ['zz*']}, None, None,
        {'ab': {'c': 1}, 'abc': 2, 'a.b.c': 7},
        id='wildcard_exclude_with_include_star_crosses_dots',
    ),
    pytest.param(
        MANY, {'excludes': ['nope*', 'obj.x*']}, None, None,
        {'field_0': 0,
         'field_3': 3,
         'field_10': 10,
         'field_4': 4,
         'field_11': 11,
         'field_1': 1,
         'field_12': 12,
         'field_2': 2,
         'field_13': 13,
         'título': 1,
         '名前': 2,
         'obj': {'inner_b': 1, 'inner_a': 2},
         'emoji😀': 3,
         'field_7': 7,
         'field_8': 8,
         'field_5': 5,
         'field_6': 6,
         'field_9': 9},
        id='wildcard_exclude_orders_many_keys_like_java_hashmap',
    ),
    pytest.param(
        DOTTED, {'includes': ['a'], 'excludes': ['zz*']}, None, None,
        {'a': {'b': {'d': 8}}, 'a.b.c': 7},
        id='wildcard_exclude_include_prefix_matches_dotted_key',
    ),
    pytest.param(
        DOTTED, {'excludes': ['a', 'zz*']}, None, None,
        {'ab': {'c': 1}, 'abc': 2, 'xa': {'c': 3}},
        id='wildcard_exclude_prefix_matches_dotted_key',
    ),
    pytest.param(
        NESTED, {'excludes': ['*']}, None, None,
        {},
        id='exclude_star_empties_source',
    ),
    pytest.param(
        NESTED, {'excludes': ['meta.author.name', 'meta.author.age']}, None, {'fields': ['title']},
        {'meta': {'author': {}, 'tags': ['x', 'y']}, 'title': 'alpha', 'n': 1},
        id='fields_switch_to_map_filter',
    ),
    pytest.param(
        WIDE, ['title', 'meta', 'items'], None, {'fields': ['title']},
        {'meta': {'author': {'name': 'ann', 'age': 30}, 'tags': ['x']},
         'title': 't',
         'items': [{'name': 'i1', 'price': 1}, {}]},
        id='fields_include_rebuilds_in_hash_order',
    ),
    pytest.param(
        NESTED, False, None, None,
        'ABSENT',
        id='source_false_removes_source',
    ),
    pytest.param(
        NESTED, True, None, None,
        {'title': 'alpha', 'meta': {'author': {'name': 'ann', 'age': 30}, 'tags': ['x', 'y']}, 'n': 1},
        id='source_true_is_full',
    ),
    pytest.param(
        NESTED, [], None, None,
        {'title': 'alpha', 'meta': {'author': {'name': 'ann', 'age': 30}, 'tags': ['x', 'y']}, 'n': 1},
        id='source_empty_list_is_full',
    ),
    pytest.param(
        NESTED, 'title', None, None,
        {'title': 'alpha'},
        id='source_string_is_one_include',
    ),
    pytest.param(
        NESTED, 'true', None, None,
        {},
        id='source_string_true_is_a_field_name',
    ),
    pytest.param(
        NESTED, {}, None, None,
        {'title': 'alpha', 'meta': {'author': {'name': 'ann', 'age': 30}, 'tags': ['x', 'y']}, 'n': 1},
        id='source_empty_object_is_full',
    ),
    pytest.param(
        NESTED, None, {'_source': 'false'}, None,
        'ABSENT',
        id='param_source_false',
    ),
    pytest.param(
        NESTED, None, {'_source': 'title,n'}, None,
        {'title': 'alpha', 'n': 1},
        id='param_source_list',
    ),
    pytest.param(
        NESTED, None, {'_source': 'TRUE'}, None,
        {},
        id='param_source_only_exact_true_is_boolean',
    ),
    pytest.param(
        NESTED, ['meta'], {'_source_includes': 'title'}, None,
        {'title': 'alpha'},
        id='param_includes_override_body',
    ),
    pytest.param(
        NESTED, ['meta'], {'_source_excludes': 'meta'}, None,
        {'title': 'alpha', 'n': 1},
        id='param_excludes_replace_body_includes',
    ),
    pytest.param(
        NESTED, False, {'_source': 'true'}, None,
        {'title': 'alpha', 'meta': {'author': {'name': 'ann', 'age': 30}, 'tags': ['x', 'y']}, 'n': 1},
        id='param_true_overrides_body_false',
    ),
    pytest.param(
        NESTED, None, {'_source': 'false', '_source_includes': 'title'}, None,
        'ABSENT',
        id='param_false_with_includes_disables',
    ),
    pytest.param(
        NESTED, None, {'_source': 'title', '_source_includes': 'n'}, None,
        {'n': 1},
        id='param_includes_override_param_source_list',
    ),
    pytest.param(
        NESTED, None, {'_source_includes': 'title, n'}, None,
        {'title': 'alpha', 'n': 1},
        id='param_list_items_are_trimmed',
    ),
    pytest.param(
        NESTED, None, {'_source_includes': ' '}, None,
        {},
        id='param_blank_include_matches_nothing',
    ),
    pytest.param(
        NESTED, None, {'_source': ''}, None,
        {'title': 'alpha', 'meta': {'author': {'name': 'ann', 'age': 30}, 'tags': ['x', 'y']}, 'n': 1},
        id='param_empty_is_full_source',
    ),
    pytest.param(
        NESTED, None, None, {'stored_fields': ['title']},
        'ABSENT',
        id='stored_fields_drop_implicit_source',
    ),
    pytest.param(
        NESTED, ['title'], None, {'stored_fields': ['title']},
        {'title': 'alpha'},
        id='stored_fields_with_explicit_source',
    ),
    pytest.param(
        NESTED, None, {'_source_includes': 'n'}, {'stored_fields': ['title']},
        {'n': 1},
        id='stored_fields_with_param_source',
    ),
]


def client_view(
    doc: dict[str, Any], body_source: Any, params: dict[str, str] | None, body: dict[str, Any] | None
) -> Any:
    """The hit's `_source` for this request, deriving the flags from the body as the proxy does."""
    body = body or {}
    flt = source_filter_from_request(
        body_source, params or {}, "stored_fields" in body, fields_given=bool(body.get("fields")))
    return filter_source(doc, flt) if flt.enabled else ABSENT


@pytest.mark.parametrize(("doc", "body_source", "params", "body", "expected"), SOURCE_CASES)
def test_source_view_matches_cluster(doc, body_source, params, body, expected):
    assert_exact(client_view(doc, body_source, params, body), expected)


@pytest.mark.parametrize(
    "body_source",
    [{"bogus": ["a"]}, 3, {"includes": [1]}, [["a"]], {"excludes": {"a": 1}}],
    ids=["unknown_key", "number", "non_string_include", "nested_list", "object_exclude"],
)
def test_source_the_cluster_rejects_raises(body_source):  # the cluster answered 400 to each of these
    with pytest.raises(ValueError):
        source_filter_from_request(body_source, {}, False)


def test_bad_body_source_raises_even_when_params_override_it():  # the cluster: 400
    with pytest.raises(ValueError):
        source_filter_from_request({"bogus": 1}, {"_source_includes": "title"}, False)


def test_exclude_vectors_key_is_accepted():
    flt = source_filter_from_request({"includes": ["title"], "exclude_vectors": False}, {}, False)
    assert flt == SourceFilter(True, ("title",), ())


def test_parsed_filter_keeps_patterns_in_request_order():
    flt = source_filter_from_request({"include": "a", "excludes": ["c", "b*"]}, {}, False)
    assert flt == SourceFilter(True, ("a",), ("c", "b*"))


def test_no_source_option_is_identity():
    flt = source_filter_from_request(None, {}, False)
    assert flt.is_identity and flt == SourceFilter()


def test_identity_only_when_enabled_and_unfiltered():
    assert not SourceFilter(enabled=False).is_identity
    assert not SourceFilter(includes=("a",)).is_identity
    assert not SourceFilter(excludes=("a",)).is_identity


def test_identity_filter_returns_source_unchanged():
    assert filter_source(NESTED, SourceFilter()) is NESTED


def test_fields_marks_map_filtering():
    assert source_filter_from_request(["a"], {}, False, fields_given=True).map_filtering


@pytest.mark.parametrize(
    "flt",
    [SourceFilter(includes=("meta.author.name", "items.name")), SourceFilter(excludes=("meta.tags", "items.*")),
     SourceFilter(excludes=("meta.author.name",), map_filtering=True)],
    ids=["include", "wildcard_exclude", "map_filtering"],
)
def test_filter_source_leaves_input_untouched(flt):
    doc = {**NESTED, "items": [{"name": "i1", "price": 1}]}
    before = json.dumps(doc)
    filter_source(doc, flt)
    assert json.dumps(doc) == before


# ---- filter_path ----

SEARCH = {'took': 0,
 'timed_out': False,
 '_shards': {'total': 1, 'successful': 1, 'skipped': 0, 'failed': 0},
 'hits': {'total': {'value': 3, 'relation': 'eq'},
          'max_score': 0.9400072,
          'hits': [{'_index': 'fp',
                    '_id': '1',
                    '_score': 0.9400072,
                    '_source': {'title': 'red fox', 'tag': 'a', 'n': 1, 'o': {'p': 1, 'q': [1, 2]}}},
                   {'_index': 'fp',
                    '_id': '2',
                    '_score': 0.4700036,
                    '_source': {'title': 'red dog', 'tag': 'b', 'n': 2, 'o': {'p': 2, 'q': []}}}]},
 'aggregations': {'by_tag': {'doc_count_error_upper_bound': 0,
                             'sum_other_doc_count': 0,
                             'buckets': [{'key': 'a', 'doc_count': 2, 'top': {'value': 3.0}},
                                         {'key': 'b', 'doc_count': 1, 'top': {'value': 2.0}}]}}}

TYPED_SEARCH = {'took': 0,
 'timed_out': False,
 '_shards': {'total': 1, 'successful': 1, 'skipped': 0, 'failed': 0},
 'hits': {'total': {'value': 1, 'relation': 'eq'},
          'max_score': 0.9808291,
          'hits': [{'_index': 'fp',
                    '_id': '3',
                    '_score': 0.9808291,
                    '_source': {'title': 'blue fox', 'tag': 'a', 'n': 3, 'o': {}}}]},
 'aggregations': {'sterms#by_tag': {'doc_count_error_upper_bound': 0,
                                    'sum_other_doc_count': 0,
                                    'buckets': [{'key': 'a', 'doc_count': 1, 'max#top': {'value': 3.0}}]}}}

MSEARCH = {'took': 0,
 'responses': [{'took': 0,
                'timed_out': False,
                '_shards': {'total': 1, 'successful': 1, 'skipped': 0, 'failed': 0},
                'hits': {'total': {'value': 1, 'relation': 'eq'},
                         'max_score': 0.9808291,
                         'hits': [{'_index': 'fp',
                                   '_id': '3',
                                   '_score': 0.9808291,
                                   '_source': {'title': 'blue fox', 'tag': 'a', 'n': 3, 'o': {}}}]},
                'status': 200},
               {'error': {'root_cause': [{'type': 'index_not_found_exception',
                                          'reason': 'no such index [missing]',
                                          'resource.type': 'index_or_alias',
                                          'resource.id': 'missing',
                                          'index_uuid': '_na_',
                                          'index': 'missing'}],
                          'type': 'index_not_found_exception',
                          'reason': 'no such index [missing]',
                          'resource.type': 'index_or_alias',
                          'resource.id': 'missing',
                          'index_uuid': '_na_',
                          'index': 'missing'},
                'status': 404}]}

FILTER_PATH_CASES = [
    pytest.param(
        SEARCH, 'hits.hits._id',
        {'hits': {'hits': [{'_id': '1'}, {'_id': '2'}]}},
        id='one_field_per_hit',
    ),
    pytest.param(
        SEARCH, 'took,hits.hits._id',
        {'took': 0, 'hits': {'hits': [{'_id': '1'}, {'_id': '2'}]}},
        id='several_expressions',
    ),
    pytest.param(
        SEARCH, ' hits.total.value , took ',
        {'took': 0, 'hits': {'total': {'value': 3}}},
        id='expressions_are_trimmed',
    ),
    pytest.param(
        SEARCH, 'hits.total',
        {'hits': {'total': {'value': 3, 'relation': 'eq'}}},
        id='matched_object_is_kept_whole',
    ),
    pytest.param(
        SEARCH, 'nope',
        {},
        id='nothing_matches_gives_empty_object',
    ),
    pytest.param(
        SEARCH, 'took.x',
        {},
        id='path_through_scalar_matches_nothing',
    ),
    pytest.param(
        SEARCH, 'hits.hits._source.o.*',
        {'hits': {'hits': [{'_source': {'o': {'p': 1, 'q': [1, 2]}}}, {'_source': {'o': {'p': 2, 'q': []}}}]}},
        id='star_matches_one_name',
    ),
    pytest.param(
        SEARCH, 'h*.hits._i*',
        {'hits': {'hits': [{'_index': 'fp', '_id': '1'}, {'_index': 'fp', '_id': '2'}]}},
        id='star_inside_a_name',
    ),
    pytest.param(
        SEARCH, '**.p',
        {'hits': {'hits': [{'_source': {'o': {'p': 1}}}, {'_source': {'o': {'p': 2}}}]}},
        id='double_star_any_depth',
    ),
    pytest.param(
        SEARCH, '**.took',
        {},
        id='double_star_needs_a_level_above',
    ),
    pytest.param(
        SEARCH, 'hits.hits._source.o.q',
        {'hits': {'hits': [{'_source': {'o': {'q': [1, 2]}}}, {'_source': {'o': {'q': []}}}]}},
        id='matched_empty_array_is_kept',
    ),
    pytest.param(
        TYPED_SEARCH, 'hits.hits._source.o.p,took',
        {'took': 0},
        id='empty_object_on_the_path_is_dropped',
    ),
    pytest.param(
        MSEARCH, 'responses.error.resource.type',
        {},
        id='dotted_names_are_not_paths',
    ),
    pytest.param(
        MSEARCH, 'responses.error.resource\\.type',
        {'responses': [{'error': {'resource.type': 'index_or_alias'}}]},
        id='escaped_dot_matches_dotted_name',
    ),
    pytest.param(
        SEARCH, '-took,-hits,-aggregations,-_shards',
        {'timed_out': False},
        id='exclude_keys',
    ),
    pytest.param(
        SEARCH, 'hits.hits,-hits.hits._source,-hits.hits._index',
        {'hits': {'hits': [{'_id': '1', '_score': 0.9400072}, {'_id': '2', '_score': 0.4700036}]}},
        id='exclude_in_every_hit',
    ),
    pytest.param(
        SEARCH, 'hits.hits._source.o,-hits.hits._source.o.q.x,-hits.hits._source.o.p',
        {'hits': {'hits': [{'_source': {'o': {'q': [1, 2]}}}, {'_source': {'o': {'q': []}}}]}},
        id='exclude_keeps_array_that_was_empty',
    ),
    pytest.param(
        SEARCH, 'hits.hits._source,-hits.hits._source.o.p,-hits.hits._source.o.q',
        {'hits': {'hits': [{'_source': {'title': 'red fox', 'tag': 'a', 'n': 1}},
                           {'_source': {'title': 'red dog', 'tag': 'b', 'n': 2}}]}},
        id='exclude_drops_object_it_empties',
    ),
    pytest.param(
        SEARCH, 'hits.hits._source,-**.p,-**.title,-**.tag',
        {'hits': {'hits': [{'_source': {'n': 1, 'o': {'q': [1, 2]}}}, {'_source': {'n': 2, 'o': {'q': []}}}]}},
        id='exclude_double_star',
    ),
    pytest.param(
        SEARCH, '-*',
        {},
        id='exclude_everything_gives_empty_object',
    ),
    pytest.param(
        SEARCH, 'hits.total,-',
        {'hits': {'total': {'value': 3, 'relation': 'eq'}}},
        id='lone_minus_changes_nothing',
    ),
    pytest.param(
        SEARCH, 'hits.hits._source.o.p,-hits.hits._source.o.p',
        {},
        id='exclude_wins_over_include',
    ),
    pytest.param(
        SEARCH, 'hits,hits.total,-hits.hits',
        {'hits': {'total': {'value': 3, 'relation': 'eq'}, 'max_score': 0.9400072}},
        id='shorter_expression_wins',
    ),
    pytest.param(
        SEARCH, 'hits.total,hits,-hits.hits',
        {'hits': {'total': {'value': 3, 'relation': 'eq'}, 'max_score': 0.9400072}},
        id='shorter_expression_wins_when_given_last',
    ),
    pytest.param(
        SEARCH, 'aggregations.by_tag.buckets.key',
        {'aggregations': {'by_tag': {'buckets': [{'key': 'a'}, {'key': 'b'}]}}},
        id='aggregation_buckets',
    ),
    pytest.param(
        SEARCH, 'aggregations.**.value',
        {'aggregations': {'by_tag': {'buckets': [{'top': {'value': 3.0}}, {'top': {'value': 2.0}}]}}},
        id='aggregation_values_by_double_star',
    ),
    pytest.param(
        SEARCH, 'aggregations,-aggregations.by_tag.buckets.top',
        {'aggregations': {'by_tag': {'doc_count_error_upper_bound': 0,
                                     'sum_other_doc_count': 0,
                                     'buckets': [{'key': 'a', 'doc_count': 2}, {'key': 'b', 'doc_count': 1}]}}},
        id='exclude_sub_aggregation',
    ),
    pytest.param(
        TYPED_SEARCH, 'aggregations.by_tag',
        {},
        id='typed_keys_name_must_be_typed',
    ),
    pytest.param(
        TYPED_SEARCH, 'aggregations.sterms#by_tag.buckets.key',
        {'aggregations': {'sterms#by_tag': {'buckets': [{'key': 'a'}]}}},
        id='typed_keys_full_name',
    ),
    pytest.param(
        TYPED_SEARCH, 'aggregations.*#by_tag.buckets.max#top',
        {'aggregations': {'sterms#by_tag': {'buckets': [{'max#top': {'value': 3.0}}]}}},
        id='typed_keys_star_prefix',
    ),
    pytest.param(
        MSEARCH, 'responses.hits.hits._id',
        {'responses': [{'hits': {'hits': [{'_id': '3'}]}}]},
        id='msearch_hits_in_every_response',
    ),
    pytest.param(
        MSEARCH, 'responses.error.type,responses.status',
        {'responses': [{'status': 200}, {'error': {'type': 'index_not_found_exception'}, 'status': 404}]},
        id='msearch_errors_and_status',
    ),
    pytest.param(
        MSEARCH, '-responses.hits,-responses.error,-responses._shards',
        {'took': 0, 'responses': [{'took': 0, 'timed_out': False, 'status': 200}, {'status': 404}]},
        id='msearch_exclude',
    ),
]


@pytest.mark.parametrize(("response", "filter_path", "expected"), FILTER_PATH_CASES)
def test_filter_path_matches_cluster(response, filter_path, expected):
    assert_exact(apply_filter_path(response, filter_path), expected)


@pytest.mark.parametrize("filter_path", ["", ",", " , "])
def test_filter_path_without_expressions_changes_nothing(filter_path):  # the cluster: full response
    assert_exact(apply_filter_path(SEARCH, filter_path), SEARCH)


def test_filter_path_leaves_input_untouched():
    before = json.dumps(MSEARCH)
    apply_filter_path(MSEARCH, "responses.hits.hits._id,-responses.status")
    assert json.dumps(MSEARCH) == before


# ---- OpenSearch 2.19.6: the same functions with opensearch=True ----

OPENSEARCH_SOURCE_CASES = [
    pytest.param(
        NESTED, ['meta', 'title'],
        {'meta': {'author': {'name': 'ann', 'age': 30}, 'tags': ['x', 'y']}, 'title': 'alpha'},
        id='os_include_rebuilds_every_object_in_hash_order',
    ),
    pytest.param(
        ARRAYS, ['items'],
        {'items': [{'price': 1, 'name': 'i1'}, {'name': 'i2'}, 'loose', 5, {}]},
        id='os_include_of_array_reorders_its_objects',
    ),
    pytest.param(
        DOTTED, ['a*c'],
        {'ab': {'c': 1}, 'abc': 2, 'a.b.c': 7},
        id='os_include_star_crosses_dots',
    ),
    pytest.param(
        NESTED, {'excludes': ['meta.author.name', 'meta.author.age']},
        {'meta': {'author': {}, 'tags': ['x', 'y']}, 'title': 'alpha', 'n': 1},
        id='os_exclude_keeps_emptied_object',
    ),
    pytest.param(
        ARRAYS, {'excludes': ['items.name']},
        {'deep': [[{'a': 1}], [{'a': 2, 'b': 3}], []], 'items': [{'price': 1}, 'loose', 5]},
        id='os_exclude_drops_emptied_array_elements',
    ),
    pytest.param(
        MANY, {'excludes': ['obj.x']},
        {'field_0': 0,
         'field_3': 3,
         'field_10': 10,
         'field_4': 4,
         'field_11': 11,
         'field_1': 1,
         'field_12': 12,
         'field_2': 2,
         'field_13': 13,
         'título': 1,
         '名前': 2,
         'obj': {'inner_b': 1, 'inner_a': 2},
         'emoji😀': 3,
         'field_7': 7,
         'field_8': 8,
         'field_5': 5,
         'field_6': 6,
         'field_9': 9},
        id='os_many_keys',
    ),
    pytest.param(
        NESTED, True,
        {'title': 'alpha', 'meta': {'author': {'name': 'ann', 'age': 30}, 'tags': ['x', 'y']}, 'n': 1},
        id='os_no_filter_keeps_document_order',
    ),
]

OPENSEARCH_FILTER_PATH_CASES = [
    pytest.param(
        'hits.hits._source.o,-hits.hits._source.o.q.x,-hits.hits._source.o.p',
        {'hits': {'hits': [{'_source': {'o': {'q': [1, 2]}}}]}},
        id='os_exclude_drops_array_that_was_empty',
    ),
    pytest.param(
        'hits.hits._source.o.q',
        {'hits': {'hits': [{'_source': {'o': {'q': [1, 2]}}}, {'_source': {'o': {'q': []}}}]}},
        id='os_include_keeps_matched_empty_array',
    ),
    pytest.param(
        '-took,-hits,-aggregations,-_shards',
        {'timed_out': False},
        id='os_exclude_keys',
    ),
]


@pytest.mark.parametrize(("doc", "body_source", "expected"), OPENSEARCH_SOURCE_CASES)
def test_opensearch_source_view_matches_cluster(doc, body_source, expected):
    flt = source_filter_from_request(body_source, {}, False)
    assert_exact(filter_source(doc, flt, opensearch=True), expected)


@pytest.mark.parametrize(("filter_path", "expected"), OPENSEARCH_FILTER_PATH_CASES)
def test_opensearch_filter_path_matches_cluster(filter_path, expected):  # OpenSearch answered SEARCH identically
    assert_exact(apply_filter_path(SEARCH, filter_path, opensearch=True), expected)
