/* The first-frame sender of the VM backstop scenario: a container's entrypoint that writes
 * link-layer frames from its first millisecond. frames.py does the same, but python3 takes
 * seconds to start under TCG, by when policyd has long mapped the container: only a sender
 * this fast meets the window in which the container is not mapped yet (the unknown-container
 * verdict). Built static on the host (tests/vm/run.sh), so it runs in the busybox image.
 *
 * usage: first_frames NAME SECONDS DST_MAC DST4 DST6 PORT OUT
 *
 * Sends, in a loop for SECONDS, on eth0, the same three probes as frames.py's
 * "NAMEa=raw-udp4 NAMEb=dgram-udp4+bypass NAMEc=raw-udp6" (UDP to PORT, the payload the
 * marker MK{NAMEx} that frames.py's capture looks for), and writes frames.py's report to OUT
 * (through OUT.tmp, renamed) and stdout: one line "NAMEx sent=N errors=E [first_error=...]"
 * per probe, then "first_send_ms=T since_start_ms=S" (T: from main() to the first frame the
 * kernel took; S: how long the process had run then, from /proc/self/stat).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define IFACE "eth0"
#ifndef PACKET_QDISC_BYPASS
#define PACKET_QDISC_BYPASS 20
#endif

struct probe {
	char name[41];
	int fd;
	int socket_errno; /* why socket() failed, when fd < 0 */
	unsigned char frame[160];
	size_t len;
	struct sockaddr_ll to; /* sll_family 0: send(), the frame carries its own header */
	long sent, errors;
	int first_error;
};

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* How long this process has run, in ms: its start time (field 22 of /proc/self/stat, in clock
 * ticks since boot) against /proc/uptime. -1 if either cannot be read. */
static long process_age_ms(void)
{
	char buf[1024];
	FILE *f = fopen("/proc/self/stat", "r");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	if (!p)
		return -1;
	unsigned long long start = 0;
	/* After ") ": state is field 3; starttime is field 22, the 20th after the ')'. */
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
		   &start) != 1)
		return -1;
	double uptime;
	f = fopen("/proc/uptime", "r");
	if (!f)
		return -1;
	int ok = fscanf(f, "%lf", &uptime) == 1;
	fclose(f);
	if (!ok)
		return -1;
	return (long)((uptime - (double)start / sysconf(_SC_CLK_TCK)) * 1000);
}

static uint16_t checksum(const unsigned char *data, size_t len, uint32_t sum)
{
	for (size_t i = 0; i + 1 < len; i += 2)
		sum += (uint32_t)data[i] << 8 | data[i + 1];
	if (len % 2)
		sum += (uint32_t)data[len - 1] << 8;
	while (sum >> 16)
		sum = (sum >> 16) + (sum & 0xffff);
	return ~sum & 0xffff;
}

static void put16(unsigned char *p, uint16_t v)
{
	p[0] = v >> 8;
	p[1] = v & 0xff;
}

/* A UDP datagram from sport to port carrying the marker, its checksum over the pseudo-header
 * of the given addresses (4 or 16 bytes each). Returns its length. */
static size_t udp(unsigned char *out, const unsigned char *src, const unsigned char *dst, size_t alen,
		  uint16_t sport, uint16_t port, const char *marker)
{
	size_t dlen = strlen(marker), len = 8 + dlen;
	put16(out, sport);
	put16(out + 2, port);
	put16(out + 4, len);
	put16(out + 6, 0);
	memcpy(out + 8, marker, dlen);
	unsigned char pseudo[40] = { 0 };
	memcpy(pseudo, src, alen);
	memcpy(pseudo + alen, dst, alen);
	size_t plen;
	if (alen == 4) {
		pseudo[9] = 17;
		put16(pseudo + 10, len);
		plen = 12;
	} else {
		put16(pseudo + 34, len);
		pseudo[39] = 17;
		plen = 40;
	}
	uint32_t sum = 0xffff & ~checksum(pseudo, plen, 0);
	uint16_t csum = checksum(out, len, sum);
	put16(out + 6, csum ? csum : 0xffff);
	return len;
}

static size_t ipv4(unsigned char *out, const unsigned char *src, const unsigned char *dst, uint16_t sport,
		   uint16_t port, const char *marker)
{
	size_t len = 20 + udp(out + 20, src, dst, 4, sport, port, marker);
	memset(out, 0, 20);
	out[0] = 0x45;
	put16(out + 2, len);
	put16(out + 4, 0x4242);
	out[8] = 64;
	out[9] = 17;
	memcpy(out + 12, src, 4);
	memcpy(out + 16, dst, 4);
	put16(out + 10, checksum(out, 20, 0));
	return len;
}

static size_t ipv6(unsigned char *out, const unsigned char *src, const unsigned char *dst, uint16_t sport,
		   uint16_t port, const char *marker)
{
	size_t plen = udp(out + 40, src, dst, 16, sport, port, marker);
	memset(out, 0, 8);
	out[0] = 0x60;
	put16(out + 4, plen);
	out[6] = 17;
	out[7] = 64;
	memcpy(out + 8, src, 16);
	memcpy(out + 24, dst, 16);
	return 40 + plen;
}

static uint16_t source_port(const char *marker)
{
	unsigned sum = 0;
	for (const char *c = marker; *c; c++)
		sum += (unsigned char)*c;
	return 40000 + sum % 20000;
}

/* The interface's global-scope IPv6 address, as frames.py takes it; all zeros if it has none
 * yet. */
static void own_ipv6(unsigned char out[16])
{
	memset(out, 0, 16);
	FILE *f = fopen("/proc/net/if_inet6", "r");
	if (!f)
		return;
	char addr[33], name[IF_NAMESIZE + 1];
	unsigned idx, plen, scope, flags;
	while (fscanf(f, "%32s %x %x %x %x %16s", addr, &idx, &plen, &scope, &flags, name) == 6) {
		if (scope == 0 && strcmp(name, IFACE) == 0) {
			for (int i = 0; i < 16; i++)
				sscanf(addr + 2 * i, "%2hhx", &out[i]);
			break;
		}
	}
	fclose(f);
}

static int parse_mac(const char *text, unsigned char out[6])
{
	return sscanf(text, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &out[0], &out[1], &out[2], &out[3], &out[4],
		      &out[5]) == 6;
}

int main(int argc, char **argv)
{
	double t_start = now_ms();
	if (argc != 8) {
		fprintf(stderr, "usage: first_frames NAME SECONDS DST_MAC DST4 DST6 PORT OUT\n");
		return 2;
	}
	const char *name = argv[1], *out = argv[7];
	if (strlen(name) < 1 || strlen(name) > 39) {
		fprintf(stderr, "first_frames: NAME must be 1 to 39 characters (frames.py's marker)\n");
		return 2;
	}
	double seconds = atof(argv[2]);
	uint16_t port = atoi(argv[6]);
	unsigned char dst_mac[6], src_mac[6] = { 0 }, dst4[4], src4[4] = { 0 }, dst6[16], src6[16];
	if (!parse_mac(argv[3], dst_mac) || inet_pton(AF_INET, argv[4], dst4) != 1 ||
	    inet_pton(AF_INET6, argv[5], dst6) != 1) {
		fprintf(stderr, "first_frames: bad DST_MAC, DST4 or DST6\n");
		return 2;
	}
	int ifindex = if_nametoindex(IFACE);
	struct ifreq ifr = { 0 };
	strncpy(ifr.ifr_name, IFACE, IFNAMSIZ - 1);
	int ctl = socket(AF_INET, SOCK_DGRAM, 0);
	if (ctl >= 0 && ioctl(ctl, SIOCGIFHWADDR, &ifr) == 0)
		memcpy(src_mac, ifr.ifr_hwaddr.sa_data, 6);
	if (ctl >= 0 && ioctl(ctl, SIOCGIFADDR, &ifr) == 0)
		memcpy(src4, &((struct sockaddr_in *)&ifr.ifr_addr)->sin_addr, 4);
	if (ctl >= 0)
		close(ctl);
	own_ipv6(src6);

	struct probe probes[3] = { 0 };
	for (int i = 0; i < 3; i++) {
		struct probe *p = &probes[i];
		snprintf(p->name, sizeof p->name, "%.39s%c", name, 'a' + i);
		char marker[sizeof p->name + 4];
		snprintf(marker, sizeof marker, "MK{%.40s}", p->name);
		uint16_t sport = source_port(marker);
		if (i == 1) {
			/* dgram-udp4+bypass: the kernel writes the Ethernet header; past the qdisc. */
			p->fd = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP));
			p->socket_errno = errno;
			int one = 1;
			setsockopt(p->fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
			p->len = ipv4(p->frame, src4, dst4, sport, port, marker);
			p->to.sll_family = AF_PACKET;
			p->to.sll_protocol = htons(ETH_P_IP);
			p->to.sll_ifindex = ifindex;
			p->to.sll_halen = 6;
			memcpy(p->to.sll_addr, dst_mac, 6);
			continue;
		}
		/* raw-udp4, raw-udp6: the Ethernet header is ours. */
		p->fd = socket(AF_PACKET, SOCK_RAW, 0);
		p->socket_errno = errno;
		struct sockaddr_ll bind_to = { .sll_family = AF_PACKET, .sll_ifindex = ifindex };
		if (p->fd >= 0)
			bind(p->fd, (struct sockaddr *)&bind_to, sizeof bind_to);
		memcpy(p->frame, dst_mac, 6);
		memcpy(p->frame + 6, src_mac, 6);
		put16(p->frame + 12, i == 0 ? ETH_P_IP : ETH_P_IPV6);
		p->len = 14 + (i == 0 ? ipv4(p->frame + 14, src4, dst4, sport, port, marker)
				      : ipv6(p->frame + 14, src6, dst6, sport, port, marker));
	}

	double first_ms = -1;
	long first_age = -1;
	double deadline = now_ms() + seconds * 1e3;
	struct timespec pause = { 0, 500000 };
	do {
		for (int i = 0; i < 3; i++) {
			struct probe *p = &probes[i];
			ssize_t r;
			if (p->fd < 0)
				r = -1, errno = p->socket_errno;
			else if (p->to.sll_family)
				r = sendto(p->fd, p->frame, p->len, 0, (struct sockaddr *)&p->to, sizeof p->to);
			else
				r = send(p->fd, p->frame, p->len, 0);
			if (r >= 0) {
				p->sent++;
				if (first_ms < 0) {
					first_ms = now_ms() - t_start;
					first_age = process_age_ms();
				}
			} else {
				if (!p->errors)
					p->first_error = errno;
				p->errors++;
			}
		}
		nanosleep(&pause, NULL);
	} while (now_ms() < deadline);

	char report[512];
	size_t n = 0;
	for (int i = 0; i < 3; i++) {
		struct probe *p = &probes[i];
		n += snprintf(report + n, sizeof report - n, "%s sent=%ld errors=%ld", p->name, p->sent, p->errors);
		if (p->errors)
			n += snprintf(report + n, sizeof report - n, " first_error=%s",
				      strerrorname_np(p->first_error) ? strerrorname_np(p->first_error) : "?");
		n += snprintf(report + n, sizeof report - n, "\n");
	}
	if (first_ms < 0)
		n += snprintf(report + n, sizeof report - n, "first_send_ms=none since_start_ms=none\n");
	else
		n += snprintf(report + n, sizeof report - n, "first_send_ms=%ld since_start_ms=%ld\n",
			      (long)first_ms, first_age);
	fputs(report, stdout);
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", out);
	FILE *f = fopen(tmp, "w");
	if (!f || fputs(report, f) < 0 || fclose(f) != 0 || rename(tmp, out) != 0) {
		perror(out);
		return 1;
	}
	return 0;
}
