// ByteBuffer: a growable read buffer with a consumed prefix (bytes [head, tail) are unread).
// Storage is not zero-filled on growth, and can be dropped when empty so idle connections hold
// no buffer memory. Owned by one connection on one loop; not thread-safe.
#pragma once

#include <algorithm>
#include <cstring>
#include <memory>
#include <string_view>
#include <vector>

namespace sluice::net {

class ByteBuffer {
 public:
  std::string_view data() const { return {buf_.get() + head_, tail_ - head_}; }
  size_t size() const { return tail_ - head_; }
  bool empty() const { return head_ == tail_; }
  // Never moves the unread bytes or the write position: a read may be in flight into the space
  // prepare() gave out (a relay that waits on its server consumes from a posted task meanwhile).
  void consume(size_t n) { head_ += n; }
  // Space to read into: at least `min` bytes, compacting or growing as needed. Only with no read in
  // flight.
  char* prepare(size_t min) {
    if (head_ == tail_) head_ = tail_ = 0;
    if (cap_ - tail_ < min) {
      if (head_ > 0) {
        std::memmove(buf_.get(), buf_.get() + head_, tail_ - head_);
        tail_ -= head_;
        head_ = 0;
      }
      if (cap_ - tail_ < min) {
        size_t cap = std::max(tail_ + min, cap_ * 2);
        auto bigger = std::make_unique_for_overwrite<char[]>(cap);
        if (tail_ > 0) std::memcpy(bigger.get(), buf_.get(), tail_);
        buf_ = std::move(bigger);
        cap_ = cap;
      }
    }
    return buf_.get() + tail_;
  }
  size_t writable() const { return cap_ - tail_; }
  void commit(size_t n) { tail_ += n; }
  // Drops the storage when empty, so idle connections hold no buffer memory.
  void shrinkIfEmpty() {
    if (empty() && cap_ > 0) {
      buf_.reset();
      cap_ = 0;
    }
  }
  size_t capacity() const { return cap_; }
  // Hands the (empty) storage back, e.g. to a BufferPool, or takes storage from one.
  std::unique_ptr<char[]> release() {
    head_ = tail_ = 0;
    cap_ = 0;
    return std::move(buf_);
  }
  void adopt(std::unique_ptr<char[]> storage, size_t cap) {
    buf_ = std::move(storage);
    cap_ = cap;
    head_ = tail_ = 0;
  }

 private:
  std::unique_ptr<char[]> buf_;
  size_t cap_ = 0;
  size_t head_ = 0;
  size_t tail_ = 0;
};

// BufferPool: read buffers of one fixed size that connections of one loop borrow while they
// have data and give back when drained, so idle connections hold none and busy ones do not
// allocate per request. Owned by a loop; not thread-safe.
class BufferPool {
 public:
  static constexpr size_t kSize = size_t{16} * 1024;
  std::unique_ptr<char[]> take() {
    if (free_.empty()) return std::make_unique_for_overwrite<char[]>(kSize);
    auto b = std::move(free_.back());
    free_.pop_back();
    return b;
  }
  void give(std::unique_ptr<char[]> b) {
    if (b && free_.size() < kMaxFree) free_.push_back(std::move(b));
  }

 private:
  static constexpr size_t kMaxFree = 256;
  std::vector<std::unique_ptr<char[]>> free_;
};

}  // namespace sluice::net
