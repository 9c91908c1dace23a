#include "net/outbox.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

namespace sluice::net {
namespace {

struct Pair {
  int a = -1, b = -1;
  Pair() {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    a = fds[0];
    b = fds[1];
    int small = 4096;
    ::setsockopt(a, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    ::fcntl(b, F_SETFL, O_NONBLOCK);
  }
  ~Pair() {
    if (a >= 0) ::close(a);
    if (b >= 0) ::close(b);
  }
  std::string drain() {
    std::string got;
    char buf[65536];
    ssize_t n;
    while ((n = ::read(b, buf, sizeof buf)) > 0) got.append(buf, size_t(n));
    return got;
  }
};

TEST(Outbox, SmallWriteGoesStraightThroughAndHoldsNothing) {
  Pair p;
  Outbox o;
  EXPECT_EQ(o.write(p.a, "hello"), Outbox::Result::kDone);
  EXPECT_TRUE(o.empty());
  EXPECT_EQ(p.drain(), "hello");
}

TEST(Outbox, QueuesWhatTheSocketDoesNotTakeAndKeepsOrder) {
  Pair p;
  Outbox o;
  std::string big(1 << 20, 'x');
  for (size_t i = 0; i < big.size(); ++i) big[i] = char('a' + i % 26);
  EXPECT_EQ(o.write(p.a, big), Outbox::Result::kBlocked);
  EXPECT_GT(o.pending(), 0u);
  EXPECT_LT(o.pending(), big.size());
  // Later bytes queue behind the rest, even if the socket has room again.
  std::string got = p.drain();
  EXPECT_NE(o.write(p.a, "tail"), Outbox::Result::kError);
  while (!o.empty()) {
    got += p.drain();
    EXPECT_NE(o.flush(p.a), Outbox::Result::kError);
  }
  got += p.drain();
  EXPECT_EQ(got, big + "tail");
}

TEST(Outbox, ReportsAFailedSocketAndDropsWhatWasQueued) {
  Pair p;
  Outbox o;
  ::close(p.b);
  p.b = -1;
  EXPECT_EQ(o.write(p.a, "lost"), Outbox::Result::kError);
  EXPECT_EQ(o.error(), EPIPE);
  EXPECT_TRUE(o.empty());
  EXPECT_EQ(o.write(p.a, "more"), Outbox::Result::kError);  // stays failed
}

}  // namespace
}  // namespace sluice::net
