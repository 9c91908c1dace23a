// TLS with OpenSSL, for client connections (sluice accepts) and server connections (sluice
// connects to PostgreSQL). A TlsContext is built from files once per configuration (start-up,
// RELOAD) and shared read-only by every connection made while it is current; a TlsStream is one
// connection's TLS state, owned by that connection on its loop.
//
// A TlsStream runs over memory BIOs: the connection keeps doing its own socket reads and its own
// writes through its Outbox, exactly as without TLS, and passes ciphertext through the stream.
// So TLS changes nothing in the event loop, the write-now-or-queue policy or the watermarks,
// which count ciphertext. No PostgreSQL here.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <string_view>

using SSL_CTX = struct ssl_ctx_st;
using SSL = struct ssl_st;
using BIO = struct bio_st;

namespace sluice::net {

struct TlsOptions {
  bool accept = false;  // true: sluice is the TLS server (client connections)
  std::string cert_file;
  std::string key_file;
  std::string ca_file;               // "" with verify_peer: the system's trusted roots
  std::string protocols = "secure";  // PgBouncer's syntax: secure, all, legacy or tlsv1.x names
  std::string ciphers = "default";   // PgBouncer's keywords or an OpenSSL cipher list
  std::string tls13_ciphers;         // "" = OpenSSL's TLS 1.3 suites
  std::string dheparams = "auto";
  std::string ecdhcurve = "auto";
  bool verify_peer = false;  // require the peer's certificate and check it against ca_file
  // Accepting side only: ALPN protocol a client must ask for when it offers ALPN ("" = any).
  std::string alpn;
};

class TlsContext {
 public:
  // Throws std::runtime_error naming the setting or file and OpenSSL's reason.
  static std::shared_ptr<const TlsContext> create(const TlsOptions& options);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  SSL_CTX* raw() const { return ctx_; }
  const TlsOptions& options() const { return options_; }

 private:
  TlsContext(SSL_CTX* ctx, TlsOptions options) : ctx_(ctx), options_(std::move(options)) {}
  SSL_CTX* ctx_;
  TlsOptions options_;
};

class TlsStream {
 public:
  // Connecting side: `host` is sent as SNI when it is a name, and with `check_name` the peer's
  // certificate must name it (verify-full).
  explicit TlsStream(std::shared_ptr<const TlsContext> ctx, const std::string& host = {},
                     bool check_name = false);
  ~TlsStream();
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;

  // Ciphertext that arrived before the stream existed (a direct TLS ClientHello).
  void feed(std::string_view ciphertext);
  // Reads plaintext into [p, p + room), driving the handshake first and reading ciphertext from
  // `fd` as needed. > 0: bytes; 0: the peer closed; -1 with errno: EAGAIN (wait for the socket),
  // EPROTO (TLS failed: error() says why) or the socket's error. `*drained` is set when a socket
  // read came up short, i.e. the kernel has nothing more for now.
  ssize_t read(int fd, char* p, size_t room, bool* drained);
  // Encrypts `plain` and appends the ciphertext to `*out`; false when TLS failed (error()).
  bool write(std::string_view plain, std::string* out);
  // Appends ciphertext the TLS layer produced by itself (handshake, alerts) to `*out`.
  void takeOutput(std::string* out);
  // Plaintext or ciphertext waits inside: the next read needs no socket edge.
  bool buffered() const;
  bool handshakeDone() const;

  std::string peerCommonName() const;  // of a verified peer certificate; "" without one
  bool peerVerified() const;           // the peer showed a certificate that verified
  std::string version() const;         // "TLSv1.3"
  std::string cipher() const;
  std::string alpn() const;  // the protocol agreed with ALPN; "" when none was
  const std::string& error() const { return error_; }
  // Bytes the two memory BIOs hold allocated (for tests of the idle footprint).
  size_t bioCapacity() const;

 private:
  void fail(const char* what);
  BIO* shrink(BIO* bio, bool input);

  std::shared_ptr<const TlsContext> ctx_;
  SSL* ssl_ = nullptr;
  BIO* rbio_ = nullptr;  // ciphertext in (owned by ssl_)
  BIO* wbio_ = nullptr;  // ciphertext out (owned by ssl_)
  std::string error_;
};

}  // namespace sluice::net
