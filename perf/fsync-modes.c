// How long one durable 4 KiB write takes on this disk, six ways: buffered
// or O_DIRECT, into pre-allocated (zero-filled) space or appending, with
// fdatasync after the write or RWF_DSYNC on it. 400 writes each, in
// /work/fsb.dat (removed after). What the log writer's choices rest on
// (perf/RESULTS.md, "O_DSYNC groups and reserved slots").
//   cc -O2 -o /tmp/fsync-modes perf/fsync-modes.c && /tmp/fsync-modes
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>
#include <string.h>
#include <time.h>
#include <sys/uio.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
void run(const char*name,int flags,int mode){
  int fd=open("/work/fsb.dat",O_RDWR|O_CREAT|O_TRUNC|flags,0644);
  void*buf; posix_memalign(&buf,4096,1<<20); memset(buf,0,1<<20);
  if(mode!=2){ for(int i=0;i<8;i++) pwrite(fd,buf,1<<20,(off_t)i<<20); fdatasync(fd);} 
  memset(buf,0xab,4096);
  double lat[400]; off_t off=0;
  for(int i=0;i<400;i++){
    double t=now();
    if(mode==3){ struct iovec v={buf,4096}; pwritev2(fd,&v,1,off,RWF_DSYNC);} 
    else { pwrite(fd,buf,4096,off); fdatasync(fd);} 
    lat[i]=now()-t; off+= (i%2)?4096:0;
  }
  qsort(lat,400,sizeof(double),cmp);
  printf("%-28s p50 %6.0f us  p90 %6.0f us  p99 %6.0f\n",name,lat[200],lat[360],lat[396]);
  close(fd);
}
int main(){
  run("buffered prealloc",0,0);
  run("buffered append",0,2);
  run("odirect prealloc",O_DIRECT,0);
  run("odirect append",O_DIRECT,2);
  run("odirect prealloc RWF_DSYNC",O_DIRECT,3);
  run("buffered prealloc RWF_DSYNC",0,3);
  return 0;
}
