from inventory.registry import register


@register("csv")
def to_csv(items):
    lines = ["name,qty,price"]
    for item in items:
        lines.append("%s,%d,%.2f" % (item["name"], item["qty"], item["price"]))
    return "\n".join(lines)


@register("text")
def to_text(items):
    return "\n".join("{} x{}".format(item["name"], item["qty"]) for item in items)
