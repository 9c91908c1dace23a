// ByteBuffer: a growable read buffer with a consumed prefix (bytes [head, tail) are unread).
// Storage is not zero-filled on growth, and can be dropped when empty so idle connections hold
// no buffer memory. Owned by one connection on one loop; not thread-safe.
#pragma once

#include <algorithm>
#include <cstring>
#include <memory>
#include <string_view>

namespace sluice::net {

class ByteBuffer {
 public:
  std::string_view data() const { return {buf_.get() + head_, tail_ - head_}; }
  size_t size() const { return tail_ - head_; }
  bool empty() const { return head_ == tail_; }
  void consume(size_t n) {
    head_ += n;
    if (head_ == tail_) head_ = tail_ = 0;
  }
  // Space to read into: at least `min` bytes, compacting or growing as needed.
  char* prepare(size_t min) {
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

 private:
  std::unique_ptr<char[]> buf_;
  size_t cap_ = 0;
  size_t head_ = 0;
  size_t tail_ = 0;
};

}  // namespace sluice::net
