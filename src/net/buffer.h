// ByteBuffer: a growable read buffer with a consumed prefix (bytes [head, tail) are unread).
// Owned by one connection on one loop; not thread-safe.
#pragma once

#include <cstring>
#include <string_view>
#include <vector>

namespace sluice::net {

class ByteBuffer {
 public:
  std::string_view data() const { return {buf_.data() + head_, tail_ - head_}; }
  size_t size() const { return tail_ - head_; }
  bool empty() const { return head_ == tail_; }
  void consume(size_t n) {
    head_ += n;
    if (head_ == tail_) head_ = tail_ = 0;
  }
  // Space to read into: at least `min` bytes, compacting or growing as needed.
  char* prepare(size_t min) {
    if (buf_.size() - tail_ < min) {
      if (head_ > 0) {
        std::memmove(buf_.data(), buf_.data() + head_, tail_ - head_);
        tail_ -= head_;
        head_ = 0;
      }
      if (buf_.size() - tail_ < min) buf_.resize(tail_ + min);
    }
    return buf_.data() + tail_;
  }
  size_t writable() const { return buf_.size() - tail_; }
  void commit(size_t n) { tail_ += n; }
  // Drops the storage when empty, so idle connections hold no buffer memory.
  void shrinkIfEmpty() {
    if (empty() && buf_.capacity() > 0) std::vector<char>().swap(buf_);
  }
  size_t capacity() const { return buf_.capacity(); }

 private:
  std::vector<char> buf_;
  size_t head_ = 0;
  size_t tail_ = 0;
};

}  // namespace sluice::net
