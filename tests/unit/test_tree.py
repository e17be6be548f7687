"""The chunk-list tree: round trip, zero extents, sharing between similar lists."""

import pytest

from diskvault.errors import DamagedData
from diskvault.repository.hashing import ZERO_ID, content_id
from diskvault.repository.tree import MAX_ITEMS, TreeBuilder, TreeReader, encode, parse


def build(items):
    store: dict[bytes, bytes] = {}
    b = TreeBuilder(lambda nid, node: store.setdefault(nid, node))
    for ident, n in items:
        b.add(ident, n)
    return b.finish(), store


def ids(n, salt=0):
    return [(content_id(b"%d-%d" % (salt, i)), 1000 + i % 7) for i in range(n)]


@pytest.mark.parametrize("n", [0, 1, 63, 64, 500, 5000])
def test_round_trip(n):
    items = ids(n)
    root, store = build(items)
    leaves = list(TreeReader(store.__getitem__).leaves(root))
    assert [(l.id, l.length) for l in leaves] == items
    offsets = [sum(x for _, x in items[:i]) for i in range(n)]
    assert [l.offset for l in leaves] == offsets


def test_nodes_are_bounded_and_tree_is_shallow():
    root, store = build(ids(20000))
    levels = [parse(node)[0] for node in store.values()]
    assert all(len(parse(node)[1]) <= MAX_ITEMS for node in store.values())
    assert max(levels) <= 3


def test_consecutive_zero_extents_merge():
    a, b = ids(2)
    root, store = build([a, (ZERO_ID, 10), (ZERO_ID, 20), b, (ZERO_ID, 5)])
    leaves = [(l.id, l.length) for l in TreeReader(store.__getitem__).leaves(root)]
    assert leaves == [a, (ZERO_ID, 30), b, (ZERO_ID, 5)]


def test_same_list_same_root_and_an_edit_changes_few_nodes():
    items = ids(20000)
    root1, store1 = build(items)
    assert build(items)[0] == root1
    edited = list(items)
    edited[10000] = (content_id(b"changed"), 999)
    root2, store2 = build(edited)
    assert root2 != root1
    new_nodes = set(store2) - set(store1)
    assert len(new_nodes) <= 6  # the changed leaf and its ancestors (and a possible re-cut)


def test_malformed_nodes_raise():
    with pytest.raises(DamagedData):
        parse(b"xx")
    with pytest.raises(DamagedData):
        parse(encode(0, [(ZERO_ID, 1)])[:-1])
