/*
 * rawicmp DST: send one ICMP echo request to DST the way a tunnelling tool
 * would, through a SOCK_RAW/IPPROTO_RAW socket with a hand-made IPv4 header
 * (IP_HDRINCL), so no connect/sendmsg hook ever sees it: only the cgroup_skb
 * egress program can stop it. Then wait up to 3 s for the echo reply on a
 * SOCK_RAW/IPPROTO_ICMP socket.
 *
 * Exit status: 0 reply received, 1 send refused or no reply, 2 usage or setup
 * error (e.g. no CAP_NET_RAW).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint16_t checksum(const void *data, size_t len)
{
	const uint8_t *p = data;
	uint32_t sum = 0;

	for (; len > 1; len -= 2, p += 2)
		sum += (uint32_t)p[0] << 8 | p[1];
	if (len)
		sum += (uint32_t)p[0] << 8;
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return htons((uint16_t)~sum);
}

static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

int main(int argc, char **argv)
{
	struct sockaddr_in dst = { .sin_family = AF_INET };
	uint8_t packet[sizeof(struct iphdr) + sizeof(struct icmphdr) + 16];
	struct iphdr *ip = (struct iphdr *)packet;
	struct icmphdr *icmp = (struct icmphdr *)(packet + sizeof(*ip));
	uint16_t ident = (uint16_t)getpid();
	long deadline;
	int tx, rx;

	if (argc != 2 || inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1) {
		fprintf(stderr, "usage: %s IPV4-ADDRESS\n", argv[0]);
		return 2;
	}
	rx = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
	tx = socket(AF_INET, SOCK_RAW, IPPROTO_RAW); /* implies IP_HDRINCL */
	if (rx < 0 || tx < 0) {
		perror("rawicmp: socket");
		return 2;
	}

	memset(packet, 0, sizeof(packet));
	ip->version = 4;
	ip->ihl = sizeof(*ip) / 4;
	ip->ttl = 64;
	ip->protocol = IPPROTO_ICMP;
	ip->daddr = dst.sin_addr.s_addr;
	/* saddr, id, tot_len and the header checksum are filled in by the kernel. */
	icmp->type = ICMP_ECHO;
	icmp->un.echo.id = htons(ident);
	icmp->un.echo.sequence = htons(1);
	memcpy(packet + sizeof(*ip) + sizeof(*icmp), "contain-rawicmp", 16);
	icmp->checksum = checksum(icmp, sizeof(packet) - sizeof(*ip));

	if (sendto(tx, packet, sizeof(packet), 0, (struct sockaddr *)&dst, sizeof(dst)) < 0) {
		fprintf(stderr, "rawicmp: sendto %s: %s\n", argv[1], strerror(errno));
		return 1;
	}

	deadline = now_ms() + 3000;
	for (;;) {
		uint8_t buf[1500];
		struct pollfd pfd = { .fd = rx, .events = POLLIN };
		long left = deadline - now_ms();
		ssize_t n;

		if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
			break;
		n = recv(rx, buf, sizeof(buf), 0);
		if (n < (ssize_t)sizeof(struct iphdr))
			continue;
		{
			const struct iphdr *rip = (const struct iphdr *)buf;
			size_t hl = (size_t)rip->ihl * 4;
			const struct icmphdr *ric = (const struct icmphdr *)(buf + hl);

			if ((size_t)n < hl + sizeof(*ric) || rip->saddr != dst.sin_addr.s_addr)
				continue;
			if (ric->type == ICMP_ECHOREPLY && ntohs(ric->un.echo.id) == ident) {
				printf("rawicmp: reply from %s\n", argv[1]);
				return 0;
			}
		}
	}
	fprintf(stderr, "rawicmp: no reply from %s\n", argv[1]);
	return 1;
}
