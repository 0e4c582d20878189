#!/usr/bin/env python3
# Loopback TCP ping-pong between two processes with blocking sockets: the
# floor of one round trip on this machine, without any of our code. Run it
# as is (the scheduler places the two processes) and pinned to one CPU:
#   python3 perf/loopback-pingpong.py; taskset -c 0 python3 perf/loopback-pingpong.py
# Prints p50 and p99 of 20,000 round trips of 32 bytes, in microseconds.
import socket, time, os, sys
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR,1); s.bind(('127.0.0.1',0)); s.listen(1)
port=s.getsockname()[1]
if os.fork()==0:
    c,_=s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY,1)
    while True:
        d=c.recv(64)
        if not d: os._exit(0)
        c.send(d)
c=socket.create_connection(('127.0.0.1',port)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY,1)
lat=[]
for i in range(20000):
    t=time.perf_counter_ns(); c.send(b'x'*32); c.recv(64); lat.append(time.perf_counter_ns()-t)
lat.sort(); print('p50 us', lat[len(lat)//2]/1000, 'p99', lat[len(lat)*99//100]/1000)
