#include "net/buffer.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>

namespace sluice::net {
namespace {

void write(ByteBuffer& b, char* at, const std::string& s) {
  std::memcpy(at, s.data(), s.size());
  b.commit(s.size());
}

TEST(ByteBufferTest, ConsumeKeepsTheWritePositionOfAReadInFlight) {
  ByteBuffer b;
  write(b, b.prepare(16), "first");
  // A read is started into the space after "first"; before it completes, everything is
  // consumed (the relay processed a held message from a posted task).
  char* in_flight = b.prepare(16);
  b.consume(5);
  EXPECT_TRUE(b.empty());
  write(b, in_flight, "second");
  EXPECT_EQ(b.data(), "second");
}

TEST(ByteBufferTest, EmptyBufferReusesItsStartForTheNextRead) {
  ByteBuffer b;
  char* start = b.prepare(16);
  write(b, start, "abc");
  b.consume(3);
  EXPECT_EQ(b.prepare(16), start);  // no read in flight: back to the start, nothing to move
  write(b, start, "de");
  b.consume(1);
  write(b, b.prepare(b.writable() + 1), "fg");  // compacts, then grows
  EXPECT_EQ(b.data(), "efg");
}

}  // namespace
}  // namespace sluice::net
