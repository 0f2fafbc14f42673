"""Servers listen on loopback only; engines spread over a multi-node Ray cluster give the same result."""


import psutil


LOOPBACK = ("127.", "::1", "::ffff:127.")


def listening(pids):
    addresses = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            addresses.append((conn.laddr.ip, conn.laddr.port, psutil.Process(conn.pid).name()))
    return addresses


def test_ray_and_the_engines_listen_on_loopback_only(engine_pair):
    me = psutil.Process()
    pids = {p.pid for p in me.children(recursive=True)} | {me.pid}
    pids |= {e.info["pid"] for e in engine_pair}
    addresses = listening(pids)
    assert addresses, "no listening socket found: the check would be empty"
    exposed = [a for a in addresses if not a[0].startswith(LOOPBACK)]
    assert not exposed, exposed


