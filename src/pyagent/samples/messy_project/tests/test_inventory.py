import json
import os
import tempfile
import unittest

from inventory.core import Inventory, classify, load
from inventory.report import describe, summarize


def make():
    inv = Inventory()
    inv.add("apple", 5, 0.5)
    inv.add("pear", 200, 0.75)
    inv.add("truffle", 3, 250.0)
    inv.add("apple", 5, 0.5)
    return inv


class InventoryTest(unittest.TestCase):
    def test_add_merges_quantities(self):
        inv = make()
        self.assertEqual([i["qty"] for i in inv.items], [10, 200, 3])

    def test_total(self):
        self.assertEqual(make().total(), 10 * 0.5 + 200 * 0.75 + 3 * 250.0)

    def test_classify(self):
        self.assertEqual(classify({"qty": 0, "price": 1.0}), "out")
        self.assertEqual(classify({"qty": 3, "price": 250.0}), "low-premium")
        self.assertEqual(classify({"qty": 200, "price": 0.75}), "bulk")
        self.assertEqual(classify({"qty": 50, "price": 500.0}), "premium")

    def test_export_formats_are_registered(self):
        inv = make()
        self.assertEqual(inv.export("csv").splitlines()[0], "name,qty,price")
        self.assertIn("truffle x3", inv.export("text"))

    def test_report(self):
        self.assertEqual(summarize(make()), {"bulk": 1, "low-premium": 1, "normal": 1})
        self.assertEqual(describe(make()), "bulk: 1, low-premium: 1, normal: 1")
        self.assertEqual(describe(Inventory()), "empty")

    def test_load(self):
        with tempfile.TemporaryDirectory() as tmp:
            p = os.path.join(tmp, "inv.json")
            with open(p, "w") as f:
                f.write(json.dumps([{"name": "fig", "qty": 1, "price": 2.0}]))
            self.assertEqual(load(p).total(), 2.0)


if __name__ == "__main__":
    unittest.main()
