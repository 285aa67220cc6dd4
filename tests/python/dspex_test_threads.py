"""A user module that starts a thread at import, as some libraries do: a
zygote that imported it must refuse to fork."""

import threading

_stop = threading.Event()
threading.Thread(target=_stop.wait, name="started-at-import", daemon=True).start()
