import os, sys
import json
from typing import List, Dict, Optional
import inventory.formats
from inventory.registry import FORMATS


class Inventory(object):
    def __init__(self, items: Optional[List[Dict]] = None):
        if items == None:
            items = []
        self.items = list([i for i in items])

    def add(self, name, qty, price):
        for item in self.items:
            if item["name"] == name:
                item["qty"] = item["qty"] + qty
                return
        self.items.append(dict(name=name, qty=qty, price=price))

    def total(self):
        total = 0
        for item in self.items:
            total = total + item["qty"] * item["price"]
        return total

    def export(self, fmt):
        if not fmt in FORMATS:
            raise KeyError("unknown format: %s" % fmt)
        return FORMATS[fmt](self.items)


def classify(item, threshold=10, premium=100.0):
    if item["qty"] == 0:
        return "out"
    else:
        if item["qty"] < threshold:
            if item["price"] > premium:
                return "low-premium"
            else:
                return "low"
        else:
            if item["price"] > premium:
                if item["qty"] > threshold * 10:
                    return "bulk-premium"
                else:
                    return "premium"
            else:
                if item["qty"] > threshold * 10:
                    return "bulk"
                else:
                    return "normal"


def load(path):
    f = open(path)
    data = json.loads(f.read())
    f.close()
    return Inventory(data)
