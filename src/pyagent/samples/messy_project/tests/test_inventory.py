import json

from inventory.core import Inventory, classify, load
from inventory.report import describe, summarize


def make():
    inv = Inventory()
    inv.add("apple", 5, 0.5)
    inv.add("pear", 200, 0.75)
    inv.add("truffle", 3, 250.0)
    inv.add("apple", 5, 0.5)
    return inv


def test_add_merges_quantities():
    inv = make()
    assert [i["qty"] for i in inv.items] == [10, 200, 3]


def test_total():
    assert make().total() == 10 * 0.5 + 200 * 0.75 + 3 * 250.0


def test_classify():
    assert classify({"qty": 0, "price": 1.0}) == "out"
    assert classify({"qty": 3, "price": 250.0}) == "low-premium"
    assert classify({"qty": 200, "price": 0.75}) == "bulk"
    assert classify({"qty": 50, "price": 500.0}) == "premium"


def test_export_formats_are_registered():
    inv = make()
    assert inv.export("csv").splitlines()[0] == "name,qty,price"
    assert "truffle x3" in inv.export("text")


def test_report():
    assert summarize(make()) == {"bulk": 1, "low-premium": 1, "normal": 1}
    assert describe(make()) == "bulk: 1, low-premium: 1, normal: 1"
    assert describe(Inventory()) == "empty"


def test_load(tmp_path):
    p = tmp_path / "inv.json"
    p.write_text(json.dumps([{"name": "fig", "qty": 1, "price": 2.0}]))
    assert load(str(p)).total() == 2.0
