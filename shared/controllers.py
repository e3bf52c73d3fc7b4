"""What the services' controllers share: the security requirement of a route that needs an access
token, the signed-in caller as a dependency, and the paging parameters of a listing."""

import math
from typing import Annotated, Any

from litestar import Request
from litestar.di import NamedDependency, Provide
from litestar.params import QueryParameter

from shared.security import Identity

# The OpenAPI security requirement of a route that needs a bearer access token.
BEARER: list[dict[str, list[str]]] = [{"BearerAuth": []}]


def provide_caller(request: Request[Identity, Any, Any]) -> Identity:
    """The signed-in caller: the identity the authentication middleware verified for this request."""
    return request.user


# A handler names ``caller: Caller`` (the parameter's name is the dependency's) where it would
# otherwise take the whole request only to read ``request.user``.
Caller = NamedDependency[Identity]
CALLER = {"caller": Provide(provide_caller, sync_to_thread=False)}

Page = Annotated[int, QueryParameter(ge=1, le=1_000_000)]
PageSize = Annotated[int, QueryParameter(ge=1, le=100)]


def page_count(total: int, page_size: int) -> int:
    """How many pages of ``page_size`` items ``total`` items fill."""
    return math.ceil(total / page_size)
