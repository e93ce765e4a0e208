FORMATS = dict()


def register(name):
    def deco(fn):
        FORMATS[name] = fn
        return fn
    return deco
