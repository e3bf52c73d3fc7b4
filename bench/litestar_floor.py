"""The floor of any Litestar service: one route answering a fixed body, and nothing else.

    uvicorn bench.litestar_floor:app

``GET /api/v1/floor/item`` answers the bare app's body (``bench/upstream_app.py``) through
Litestar's routing, its request and its response, with no dependency, middleware, guard,
database, Redis, logging or metrics. Behind the API gateway it shows the most any request that
crosses a Litestar service can reach next to a proxied GET of the bare app: the Airtable
gateway's cache hits are such requests (``bench/airtable_gateway.py``).
"""

from litestar import Litestar, MediaType, Response, get

from bench.upstream_app import ITEM_BODY

FLOOR_PATH = "/api/v1/floor/item"


@get(FLOOR_PATH, media_type=MediaType.JSON)
async def item() -> Response[bytes]:
    return Response(ITEM_BODY, media_type=MediaType.JSON)


@get(["/health", "/ready"], media_type=MediaType.TEXT)
async def health() -> str:
    return "ok"


app = Litestar([item, health], openapi_config=None)
