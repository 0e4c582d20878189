// N processes at once, each writing SIZE bytes with COUNT writes plus
// fdatasync (DIRECT=1: O_DIRECT) into a pre-allocated 64 MiB file of its own
// in /work; each prints its time a write. What five replicas' logs sharing
// one disk cost (perf/RESULTS.md, the io_uring log section).
//   cc -O2 -o /tmp/fsync-parallel perf/fsync-parallel.c
//   for i in 1 2 3 4 5; do /tmp/fsync-parallel 4096 500 1 & done; wait
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>
#include <string.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
int main(int c,char**v){ int sz=atoi(v[1]); int n=atoi(v[2]); int direct=atoi(v[3]);
  char p[64]; sprintf(p,"/work/fsb2.%d",getpid());
  int fd=open(p,O_RDWR|O_CREAT|O_TRUNC|(direct?O_DIRECT:0),0644);
  void*buf; posix_memalign(&buf,4096,64<<20); memset(buf,0,64<<20);
  pwrite(fd,buf,64<<20,0); fdatasync(fd); memset(buf,0xab,sz);
  double t0=now(); off_t off=0;
  for(int i=0;i<n;i++){ pwrite(fd,buf,sz,off); fdatasync(fd); off+=sz; if(off+sz>(64<<20)) off=0;}
  double t=now()-t0; printf("sz %d: %.0f us/op, %.1f MB/s\n",sz,t/n,(double)sz*n/t); unlink(p); return 0;}
