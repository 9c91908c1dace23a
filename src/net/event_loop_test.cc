#include "net/event_loop.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <string>
#include <thread>

namespace sluice::net {
namespace {

// Reads like the connections do: one recv per onReadable, a short read marks the slot drained,
// then it wants to read again, until EOF.
class Reader : public IoWatcher {
 public:
  Reader(EventLoop* loop, int fd) : loop_(loop), fd_(fd) {}
  void onReadable() override {
    char buf[4096];
    ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
      got_ += std::string(buf, size_t(n));
      if (size_t(n) < sizeof buf) EventLoop::drained(slot_);
      loop_->wantRead(slot_);
    } else if (n == 0) {
      eof_.set_value(got_);
    } else {
      EventLoop::drained(slot_);
      loop_->wantRead(slot_);
    }
  }
  void onWritable() override {}
  EventLoop* loop_;
  int fd_;
  EventLoop::Slot* slot_ = nullptr;
  std::string got_;
  std::promise<std::string> eof_;
};

// Regression (found by tests/integration/test_faults.py, a backend killed while its server
// connection was waiting for an answer): the peer's last bytes and its FIN arrive together, so
// one edge announces both; the read of the bytes is short, and the EOF behind them must still
// be seen, though no further edge will come.
TEST(EventLoop, EofThatArrivedWithTheLastBytesIsStillRead) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  ASSERT_EQ(::send(fds[1], "last words", 10, 0), 10);
  ::shutdown(fds[1], SHUT_WR);  // data and EOF are both waiting before the loop looks
  EventLoop loop(0);
  auto reader = std::make_shared<Reader>(&loop, fds[0]);
  auto done = reader->eof_.get_future();
  loop.post([&] {
    reader->slot_ = loop.add(fds[0], reader.get(), reader);
    loop.wantRead(reader->slot_);
  });
  loop.start();
  bool eof = done.wait_for(std::chrono::seconds(5)) == std::future_status::ready;
  loop.post([&] { loop.remove(reader->slot_); });
  loop.stop();
  loop.join();
  ASSERT_TRUE(eof) << "the EOF behind a short read was never delivered";
  EXPECT_EQ(done.get(), "last words");
  ::close(fds[0]);
  ::close(fds[1]);
}

}  // namespace
}  // namespace sluice::net
