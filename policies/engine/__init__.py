"""The enforcement engine: every limit of a request checked and charged in one Redis call.

``specs``   the limits as the engine sees them, and which apply to a request
``core``    the Lua script's arguments and answers (shared by the async and sync clients)
``limiter`` the async limiter used by the proxy (waits, circuit breaker, failure modes)
"""
