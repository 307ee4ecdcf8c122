// compat_setsockopt FD LEVEL OPTNAME VALUE: sets an int socket option on an
// inherited descriptor through the 32-bit system call entry (int $0x80, the
// i386 setsockopt, 366), which a 64-bit process in a container may use
// under Docker's default seccomp profile. The kernel runs no cgroup
// setsockopt program for a compat call (net/socket.c: only `if (!compat)`).
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static long syscall32(long nr, long a, long b, long c, long d, long e) {
    long ret;
    asm volatile("int $0x80"
                 : "=a"(ret)
                 : "a"(nr), "b"(a), "c"(b), "d"(c), "S"(d), "D"(e)
                 : "memory");
    return ret;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s FD LEVEL OPTNAME VALUE\n", argv[0]);
        return 2;
    }
    // The compat entry takes 32-bit pointers: the value below 4 GiB.
    int *value = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    if (value == MAP_FAILED) {
        printf("compat_setsockopt=error:mmap\n");
        return 1;
    }
    *value = atoi(argv[4]);
    long r = syscall32(366, atol(argv[1]), atol(argv[2]), atol(argv[3]), (long)value, sizeof(int));
    if (r < 0)
        printf("compat_setsockopt=error:%s\n", strerrorname_np((int)-r) ? strerrorname_np((int)-r) : "?");
    else
        printf("compat_setsockopt=ok\n");
    return r < 0;
}
