"""``gradsonic serve``: hear and see runs in a browser, live, from another machine.

The server follows recordings (:mod:`gradsonic.follow`) - one file, or every run under a folder -
and streams their *norms* to a page (:mod:`gradsonic.web`) that draws them and synthesises the
sound itself with WebAudio, with the run's own mapping, layout and settings. The training process
needs no change and no server: the page reads what the recording already holds, a few bytes per
voice per step. Parts, in the order of the data:

* :mod:`.catalogue` - which runs there are under the root, and which cannot be read and why;
* :mod:`.stream` - following runs and streaming their rows to each page (server-sent events:
  the data flows one way, and an ``EventSource`` reconnects by itself and sends the id of the
  last event it got - the next row it needs - so a page continues without a gap);
* :mod:`.app` - the HTTP layer (Tornado): routes, token and Host checks, security headers,
  timeouts and connection limits;
* :mod:`.server` - binding, the serving thread, closing.

Safety: binds 127.0.0.1 by default. Any other address needs a token (generated, printed in the
URL as ``?token=...`` like Jupyter, compared in constant time), without which nothing is served;
without a token, requests must name a loopback host (no DNS rebinding). Nothing writes or runs
anything; a run is addressed by its id, which must be one of the recordings found under PATH
(no path from the request ever reaches the file system), symlinks leading outside PATH are not
followed, and a malformed request gets a 4xx.
"""

try:
    import tornado  # noqa: F401
except ModuleNotFoundError as e:  # an extra: say which
    raise ModuleNotFoundError("gradsonic serve needs Tornado: pip install 'gradsonic[serve]' "
                              "(or pip install tornado)", name="tornado") from e

from .app import is_loopback  # noqa: E402
from .server import DEFAULT_PORT, Server, parse_serve, serve  # noqa: E402

__all__ = ["DEFAULT_PORT", "Server", "is_loopback", "parse_serve", "serve"]
