from inventory.core import classify
import collections


def summarize(inventory):
    counts = collections.defaultdict(lambda: 0)
    for item in inventory.items:
        kind = classify(item)
        counts[kind] = counts[kind] + 1
    result = {}
    for k in sorted(counts.keys()):
        result[k] = counts[k]
    return result


def describe(inventory):
    parts = []
    for k, v in summarize(inventory).items():
        parts.append("{}: {}".format(k, v))
    if len(parts) == 0:
        return "empty"
    else:
        return ", ".join(parts)
