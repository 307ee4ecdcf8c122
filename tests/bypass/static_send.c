/* A program that is not python3: sends one marked UDP datagram. Used by the
 * exec-identity probes: built static and placed at /usr/bin/python3 inside an
 * otherwise empty chroot, it is exec'd by that path; built as usual, it is
 * put in the place of the lab's allowed executable (written over its bytes in
 * place, bind-mounted over its path) and exec'd by that executable's path.
 *
 * usage: static_send HOST PORT MARKER      prints sendto=ok|error:<errno>
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv)
{
	if (argc != 4)
		return 2;
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
	inet_pton(AF_INET, argv[1], &to.sin_addr);
	char buf[160];
	snprintf(buf, sizeof buf, "%s %s %s", argv[3], argv[3], argv[3]);
	if (sendto(fd, buf, strlen(buf), 0, (struct sockaddr *)&to, sizeof to) < 0)
		printf("sendto=error:%d\n", errno);
	else
		printf("sendto=ok\n");
	return 0;
}
