#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    long r = -1;
    const char *n = argv[i];
    errno = 0;
    if (!strcmp(n, "mount")) r = syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, 0);
    else if (!strcmp(n, "unshare")) r = syscall(SYS_unshare, 0x00020000);
    else if (!strcmp(n, "keyctl")) r = syscall(SYS_keyctl, 0, 0, 0, 0, 0);
    else if (!strcmp(n, "bpf")) r = syscall(SYS_bpf, 0, 0, 0);
    else if (!strcmp(n, "getpid")) r = syscall(SYS_getpid);
    printf("%s %s\n", n, r < 0 ? strerror(errno) : "ok");
  }
  return 0;
}
