"""stub"""


def routes(deps: dict) -> list:
    return []
