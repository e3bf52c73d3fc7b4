"""The HTTP client that talks to Airtable (or the emulator): one pooled httpx.AsyncClient."""

import httpx
import msgspec

from airtable_gateway.config import AirtableSettings


class UpstreamRequest(msgspec.Struct, frozen=True):
    """One call to the Airtable Web API: ``path`` starts with ``/v0/``; ``query`` is sent as is."""

    method: str
    path: str
    base: str
    query: str = ""
    body: bytes | None = None
    # Safe to send again after a 5xx or a lost connection (reads, PUT/PATCH/DELETE without upsert).
    retryable: bool = False

    @property
    def read(self) -> bool:
        """Whether the call only reads (a GET, or Airtable's POST listRecords)."""
        return self.method == "GET" or (self.method == "POST" and self.path.endswith("/listRecords"))


class UpstreamResponse(msgspec.Struct):
    status: int
    body: bytes
    retry_after: float | None = None


class NotSent(Exception):
    """The connection failed before the request went out: sending it again is always safe."""


class Lost(Exception):
    """The request may have reached Airtable, but no answer came back."""

    def __init__(self, timed_out: bool) -> None:
        super().__init__("timed out" if timed_out else "connection lost")
        self.timed_out = timed_out


def create_http_client(
    settings: AirtableSettings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=settings.airtable_api_url.rstrip("/"),
        timeout=httpx.Timeout(settings.airtable_timeout, connect=min(5.0, settings.airtable_timeout)),
        limits=httpx.Limits(
            max_connections=settings.airtable_pool_size, max_keepalive_connections=settings.airtable_pool_size
        ),
        transport=transport,
        follow_redirects=False,
    )


class AirtableClient:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def send(self, token: str, request: UpstreamRequest) -> UpstreamResponse:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if request.body is not None:
            headers["Content-Type"] = "application/json"
        url = request.path + (f"?{request.query}" if request.query else "")
        try:
            response = await self.http.request(request.method, url, content=request.body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise NotSent(type(exc).__name__) from None
        except httpx.TimeoutException:
            raise Lost(timed_out=True) from None
        except httpx.TransportError:
            raise Lost(timed_out=False) from None
        return UpstreamResponse(response.status_code, response.content, _retry_after(response))

    async def aclose(self) -> None:
        await self.http.aclose()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
