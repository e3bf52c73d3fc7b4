"""The gateway's transport layer: bytes on sockets, below admission and routing.

``http1`` (the pooled HTTP/1.1 client to the upstreams), ``serving`` (uvicorn's protocol with a
leaner path per request), ``redis_script`` (the one pipelined Redis call per request),
``deadlines`` (many short timeouts on one timer) and ``breaker`` (an upstream's circuit breaker).
Nothing here knows about tokens, limits or routes.
"""
