/* io_uring probe of the bypass suite: sends a marked UDP datagram to
 * HOST:PORT through io_uring only (IORING_OP_SENDMSG with a destination,
 * then IORING_OP_SEND with a destination address in addr2), never through
 * the send syscalls. Raw syscalls, no liburing: the test compiles this with
 * gcc into the lab's scratch directory.
 *
 * usage: uring_send HOST PORT MARKER      prints sendmsg=<res> send=<res>
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static struct io_uring_params p;
static char *sq, *cq;
static struct io_uring_sqe *sqes;
static int ring;

/* Submits one SQE (filled by the caller) and returns its CQE's result. */
static int run(struct io_uring_sqe *fill)
{
	unsigned mask = *(unsigned *)(sq + p.sq_off.ring_mask);
	unsigned tail = *(unsigned *)(sq + p.sq_off.tail);
	unsigned idx = tail & mask;
	sqes[idx] = *fill;
	((unsigned *)(sq + p.sq_off.array))[idx] = idx;
	__atomic_store_n((unsigned *)(sq + p.sq_off.tail), tail + 1, __ATOMIC_RELEASE);
	if (syscall(__NR_io_uring_enter, ring, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
		return -errno;
	unsigned head = __atomic_load_n((unsigned *)(cq + p.cq_off.head), __ATOMIC_ACQUIRE);
	unsigned cmask = *(unsigned *)(cq + p.cq_off.ring_mask);
	struct io_uring_cqe *cqe = &((struct io_uring_cqe *)(cq + p.cq_off.cqes))[head & cmask];
	int res = cqe->res;
	__atomic_store_n((unsigned *)(cq + p.cq_off.head), head + 1, __ATOMIC_RELEASE);
	return res;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: uring_send HOST PORT MARKER\n");
		return 2;
	}
	ring = syscall(__NR_io_uring_setup, 4, &p);
	if (ring < 0) {
		printf("setup=error:%d\n", errno);
		return 0;
	}
	sq = mmap(0, p.sq_off.array + p.sq_entries * sizeof(unsigned), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQ_RING);
	cq = mmap(0, p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe),
		  PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_CQ_RING);
	sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQES);
	if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED) {
		printf("mmap=error:%d\n", errno);
		return 0;
	}
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
	inet_pton(AF_INET, argv[1], &to.sin_addr);
	char buf[160];
	snprintf(buf, sizeof buf, "%s %s %s", argv[3], argv[3], argv[3]);
	struct iovec iov = { buf, strlen(buf) };
	struct msghdr msg = { .msg_name = &to, .msg_namelen = sizeof to, .msg_iov = &iov, .msg_iovlen = 1 };

	struct io_uring_sqe s = { 0 };
	s.opcode = IORING_OP_SENDMSG;
	s.fd = fd;
	s.addr = (uint64_t)(uintptr_t)&msg;
	s.len = 1;
	printf("sendmsg=%d\n", run(&s));

	memset(&s, 0, sizeof s);
	s.opcode = IORING_OP_SEND;
	s.fd = fd;
	s.addr = (uint64_t)(uintptr_t)buf;
	s.len = strlen(buf);
	s.addr2 = (uint64_t)(uintptr_t)&to;
	s.addr_len = sizeof to;
	printf("send=%d\n", run(&s));
	return 0;
}
