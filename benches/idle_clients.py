#!/usr/bin/env python3
# Opens 2,000 idle connections to `BINARY serve EXTRA_ARGS...` (on 127.0.0.1, a temp store),
# then times one PUT+GET on a new connection. Usage: benches/idle_clients.py BINARY [ARGS...]
import os, shutil, socket, struct, subprocess, sys, tempfile, time
binary = sys.argv[1]; extra = sys.argv[2:]
d = tempfile.mkdtemp()
# Any free port unless told one (serve's default, 6124, may be taken on a shared machine).
port_args = [] if any(a in ("--port", "-p") or a.startswith("--port=") for a in extra) else ["--port", "0"]
p = subprocess.Popen([binary, "serve", "--dir", d + "/s"] + port_args + extra, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
addr = p.stdout.readline().decode().split()[-1]; host, port = addr.rsplit(":", 1); port = int(port)
idle = [socket.create_connection((host, port)) for _ in range(2000)]
time.sleep(1)
def recvn(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c: raise EOFError
        b += c
    return b
t = time.time()
s = socket.create_connection((host, port)); s.settimeout(120)
data = b"hello idle world"
s.sendall(bytes([0, 0]) + struct.pack("<i", len(data)) + data + struct.pack("<i", -1))
assert recvn(s, 1) == b"\x00"; key = recvn(s, 20)
s.sendall(bytes([1, 0]) + key)
assert recvn(s, 1) == b"\x00"; n = struct.unpack("<i", recvn(s, 4))[0]; assert recvn(s, n) == data
print(f"{binary}: PUT+GET beside 2000 idle connections took {time.time()-t:.3f} s")
p.kill()
p.wait()
for c in idle:
    c.close()
shutil.rmtree(d, ignore_errors=True)
