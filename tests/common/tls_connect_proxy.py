"""An HTTPS proxy that plays Amazon S3 for AzCopy, which only talks HTTPS to *.amazonaws.com
hosts: every CONNECT to such a host is answered with TLS (the test's certificate for those
names) and what comes through is passed on, as plain HTTP, to a local S3 emulator (moto reads
the bucket from the Host header, as S3 does for virtual-hosted names). Any other CONNECT is
refused. One thread per tunnel; the TLS socket is only ever used by that thread.

usage: tls_connect_proxy.py CERT_PEM KEY_PEM S3_HOST:PORT  (prints its port, then serves)
"""
import select
import socket
import ssl
import sys
import threading

cert, key, target = sys.argv[1], sys.argv[2], sys.argv[3]
s3_host, s3_port = target.rsplit(":", 1)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)


def tunnel(client):
    head = b""
    while b"\r\n\r\n" not in head:
        data = client.recv(4096)
        if not data:
            client.close()
            return
        head += data
    method, where = head.split(b"\r\n", 1)[0].decode().split(" ")[:2]
    host = where.rsplit(":", 1)[0]
    if method != "CONNECT" or not host.endswith(".amazonaws.com"):
        client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        client.close()
        return
    client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
    try:
        secure = context.wrap_socket(client, server_side=True)
    except (ssl.SSLError, OSError):
        client.close()
        return
    upstream = socket.create_connection((s3_host, int(s3_port)))
    try:
        while True:
            readable, _, _ = select.select([secure, upstream], [], [], 120)
            if not readable:
                break
            if secure in readable:
                data = secure.recv(65536)
                while data and secure.pending():
                    data += secure.recv(secure.pending())
                if not data:
                    break
                upstream.sendall(data)
            if upstream in readable:
                data = upstream.recv(65536)
                if not data:
                    break
                secure.sendall(data)
    except (ssl.SSLError, OSError):
        pass
    finally:
        for s in (secure, upstream):
            try:
                s.close()
            except OSError:
                pass


server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(64)
print(server.getsockname()[1], flush=True)
while True:
    connection, _ = server.accept()
    threading.Thread(target=tunnel, args=(connection,), daemon=True).start()
