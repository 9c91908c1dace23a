#include "net/tls.h"

#include <arpa/inet.h>
#include <openssl/buffer.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <cerrno>
#include <climits>
#include <stdexcept>
#include <vector>

#include "net/sys.h"

namespace sluice::net {

namespace {

std::string opensslReason() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {  // NOLINT(google-runtime-int): OpenSSL's type
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

[[noreturn]] void throwSetup(const std::string& what) {
  throw std::runtime_error(what + ": " + opensslReason());
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// PgBouncer's protocol syntax: keywords or version names separated by commas, colons or spaces.
// Sets the lowest and highest version; a gap in between is not expressible and is refused.
void setProtocols(SSL_CTX* ctx, const std::string& spec) {
  constexpr int kVersions[] = {TLS1_VERSION, TLS1_1_VERSION, TLS1_2_VERSION, TLS1_3_VERSION};
  constexpr const char* kNames[] = {"tlsv1.0", "tlsv1.1", "tlsv1.2", "tlsv1.3"};
  bool on[4] = {false, false, false, false};
  std::string word;
  auto flush = [&] {
    if (word.empty()) return;
    std::string w = lower(word);
    word.clear();
    if (w == "secure" || w == "default") {
      on[2] = on[3] = true;
      return;
    }
    if (w == "all" || w == "legacy") {
      on[0] = on[1] = on[2] = on[3] = true;
      return;
    }
    for (int i = 0; i < 4; ++i) {
      if (w == kNames[i] || (i == 0 && w == "tlsv1")) {
        on[i] = true;
        return;
      }
    }
    throw std::runtime_error("unknown TLS protocol '" + w +
                             "'; expected secure, all, legacy, tlsv1.0, tlsv1.1, tlsv1.2 or "
                             "tlsv1.3");
  };
  for (char c : spec) {
    if (c == ',' || c == ':' || c == ' ' || c == '\t') {
      flush();
    } else {
      word += c;
    }
  }
  flush();
  int lo = -1;
  int hi = -1;
  for (int i = 0; i < 4; ++i) {
    if (!on[i]) continue;
    if (lo < 0) lo = i;
    if (hi >= 0 && hi != i - 1) {
      throw std::runtime_error("TLS protocols '" + spec + "' leave a gap between versions");
    }
    hi = i;
  }
  if (lo < 0) throw std::runtime_error("TLS protocols '" + spec + "' name no version");
  if (lo < 2) SSL_CTX_set_security_level(ctx, 0);  // TLS 1.0/1.1 need SHA-1 signatures
  SSL_CTX_set_min_proto_version(ctx, kVersions[lo]);
  SSL_CTX_set_max_proto_version(ctx, kVersions[hi]);
}

// PgBouncer's (libtls's) cipher keywords; anything else is an OpenSSL cipher list.
std::string cipherList(const std::string& spec) {
  std::string w = lower(spec);
  if (w.empty() || w == "default" || w == "secure" || w == "fast" || w == "normal") {
    return "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL";
  }
  if (w == "compat") return "HIGH:!aNULL";
  if (w == "legacy") return "HIGH:MEDIUM:!aNULL";
  if (w == "insecure" || w == "all") return "ALL:!aNULL:!eNULL";
  return spec;
}

int selectAlpn(SSL* /*ssl*/, const unsigned char** out, unsigned char* outlen,
               const unsigned char* in, unsigned int inlen, void* arg) {
  const auto* want = static_cast<const std::string*>(arg);
  // `in` is a list of length-prefixed names.
  for (unsigned int i = 0; i < inlen;) {
    unsigned int n = in[i];
    if (i + 1 + n > inlen) break;
    if (std::string_view(reinterpret_cast<const char*>(in + i + 1), n) == *want) {
      *out = in + i + 1;
      *outlen = static_cast<unsigned char>(n);
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + n;
  }
  // PostgreSQL 17 refuses a client that offers ALPN without its protocol.
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

}  // namespace

std::shared_ptr<const TlsContext> TlsContext::create(const TlsOptions& o) {
  SSL_CTX* ctx = SSL_CTX_new(o.accept ? TLS_server_method() : TLS_client_method());
  if (ctx == nullptr) throwSetup("could not create a TLS context");
  std::shared_ptr<TlsContext> out(new TlsContext(ctx, o));
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  // An idle connection keeps no 16 KB record buffers (about 34 kB each otherwise).
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
  setProtocols(ctx, o.protocols);
  if (SSL_CTX_set_cipher_list(ctx, cipherList(o.ciphers).c_str()) != 1) {
    throwSetup("bad TLS cipher list '" + o.ciphers + "'");
  }
  if (!o.tls13_ciphers.empty() && SSL_CTX_set_ciphersuites(ctx, o.tls13_ciphers.c_str()) != 1) {
    throwSetup("bad TLS 1.3 cipher suites '" + o.tls13_ciphers + "'");
  }
  std::string curve = lower(o.ecdhcurve);
  if (!curve.empty() && curve != "auto" &&
      SSL_CTX_set1_groups_list(ctx, o.ecdhcurve.c_str()) != 1) {
    throwSetup("bad ECDH curve '" + o.ecdhcurve + "'");
  }
  if (o.accept && lower(o.dheparams) != "none") SSL_CTX_set_dh_auto(ctx, 1);
  if (!o.cert_file.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx, o.cert_file.c_str()) != 1) {
      throwSetup("could not load the certificate file " + o.cert_file);
    }
  }
  if (!o.key_file.empty()) {
    if (SSL_CTX_use_PrivateKey_file(ctx, o.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
      throwSetup("could not load the key file " + o.key_file);
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
      throwSetup("the key file " + o.key_file + " does not match the certificate " + o.cert_file);
    }
  }
  if (o.accept && (o.cert_file.empty() || o.key_file.empty())) {
    throw std::runtime_error("accepting TLS needs both a certificate file and a key file");
  }
  if (!o.ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(ctx, o.ca_file.c_str(), nullptr) != 1) {
      throwSetup("could not load the CA file " + o.ca_file);
    }
  } else if (o.verify_peer && SSL_CTX_set_default_verify_paths(ctx) != 1) {
    throwSetup("could not load the system's trusted certificates");
  }
  if (o.accept) {
    if (!o.ca_file.empty()) {
      // Ask for a client certificate whenever a CA is configured, as PostgreSQL does, so that
      // auth_type = cert works; verify_peer makes it required.
      STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(o.ca_file.c_str());
      if (names != nullptr) SSL_CTX_set_client_CA_list(ctx, names);
      ERR_clear_error();
      SSL_CTX_set_verify(
          ctx, SSL_VERIFY_PEER | (o.verify_peer ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), nullptr);
    } else if (o.verify_peer) {
      throw std::runtime_error("verifying client certificates needs a CA file");
    }
    if (!o.alpn.empty()) {
      SSL_CTX_set_alpn_select_cb(ctx, selectAlpn, const_cast<std::string*>(&out->options_.alpn));
    }
  } else {
    SSL_CTX_set_verify(ctx, o.verify_peer ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nullptr);
  }
  return out;
}

TlsContext::~TlsContext() { SSL_CTX_free(ctx_); }

TlsStream::TlsStream(std::shared_ptr<const TlsContext> ctx, const std::string& host,
                     bool check_name)
    : ctx_(std::move(ctx)) {
  ssl_ = SSL_new(ctx_->raw());
  rbio_ = BIO_new(BIO_s_mem());
  wbio_ = BIO_new(BIO_s_mem());
  if (ssl_ == nullptr || rbio_ == nullptr || wbio_ == nullptr) {
    BIO_free(rbio_);
    BIO_free(wbio_);
    rbio_ = wbio_ = nullptr;
    fail("could not create a TLS connection");
    return;
  }
  BIO_set_mem_eof_return(rbio_, -1);  // an empty input means "more to come", not EOF
  SSL_set_bio(ssl_, rbio_, wbio_);
  if (ctx_->options().accept) {
    SSL_set_accept_state(ssl_);
    return;
  }
  SSL_set_connect_state(ssl_);
  if (!host.empty()) {
    in6_addr a6{};
    in_addr a4{};
    bool is_ip = ::inet_pton(AF_INET, host.c_str(), &a4) == 1 ||
                 ::inet_pton(AF_INET6, host.c_str(), &a6) == 1;
    if (!is_ip) SSL_set_tlsext_host_name(ssl_, host.c_str());
    if (check_name) {
      X509_VERIFY_PARAM* param = SSL_get0_param(ssl_);
      int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str())
                     : SSL_set1_host(ssl_, host.c_str());
      if (ok != 1) fail("could not set the host name to verify");
    }
  }
}

TlsStream::~TlsStream() {
  if (ssl_ != nullptr) SSL_free(ssl_);  // frees both BIOs
}

void TlsStream::fail(const char* what) {
  std::string why = what;
  if (ssl_ != nullptr) {
    long v = SSL_get_verify_result(ssl_);  // NOLINT(google-runtime-int): OpenSSL's type
    if (v != X509_V_OK) {
      why += std::string(": certificate verify failed: ") + X509_verify_cert_error_string(v);
      ERR_clear_error();
      error_ = why;
      return;
    }
  }
  error_ = why + ": " + opensslReason();
}

void TlsStream::feed(std::string_view ciphertext) {
  if (rbio_ != nullptr && !ciphertext.empty()) {
    BIO_write(rbio_, ciphertext.data(), int(ciphertext.size()));
  }
}

ssize_t TlsStream::read(int fd, char* p, size_t room, bool* drained) {
  if (ssl_ == nullptr || !error_.empty()) {
    errno = EPROTO;
    return -1;
  }
  for (;;) {
    ERR_clear_error();
    int n = SSL_read(ssl_, p, int(std::min<size_t>(room, INT_MAX)));
    if (n > 0) return n;
    int e = SSL_get_error(ssl_, n);
    if (e == SSL_ERROR_ZERO_RETURN) return 0;  // close_notify
    if (e != SSL_ERROR_WANT_READ) {
      fail(SSL_is_init_finished(ssl_) != 0 ? "TLS error" : "TLS handshake failed");
      errno = EPROTO;
      return -1;
    }
    char buf[16 * 1024];
    ssize_t r = sysRecv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (r < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        *drained = true;
        int saved = errno;
        rbio_ = shrink(rbio_, true);  // going idle: give back what a large read grew
        errno = saved;
      }
      return -1;
    }
    if (r == 0) return 0;
    if (size_t(r) < sizeof buf) *drained = true;
    BIO_write(rbio_, buf, int(r));
  }
}

bool TlsStream::write(std::string_view plain, std::string* out) {
  if (ssl_ == nullptr || !error_.empty()) return false;
  size_t done = 0;
  while (done < plain.size()) {
    ERR_clear_error();
    size_t wrote = 0;
    int rc = SSL_write_ex(ssl_, plain.data() + done, plain.size() - done, &wrote);
    if (rc != 1) {
      fail("TLS write failed");
      return false;
    }
    done += wrote;
  }
  takeOutput(out);
  return true;
}

void TlsStream::takeOutput(std::string* out) {
  if (wbio_ == nullptr) return;
  size_t n = BIO_ctrl_pending(wbio_);
  if (n == 0) return;
  size_t at = out->size();
  out->resize(at + n);
  int got = BIO_read(wbio_, out->data() + at, int(n));
  out->resize(at + size_t(std::max(got, 0)));
  wbio_ = shrink(wbio_, false);
}

// A memory BIO keeps the largest size it ever held; an empty one that grew past kKeepBio is
// replaced by a fresh one, so a connection that once carried a large result or COPY does not
// keep that memory while idle (with SSL_MODE_RELEASE_BUFFERS an idle TLS connection costs
// about as much as in PgBouncer).
BIO* TlsStream::shrink(BIO* bio, bool input) {
  constexpr size_t kKeepBio = size_t{8} * 1024;
  if (bio == nullptr || BIO_ctrl_pending(bio) != 0) return bio;
  BUF_MEM* mem = nullptr;
  BIO_get_mem_ptr(bio, &mem);
  if (mem == nullptr || mem->max <= kKeepBio) return bio;
  BIO* fresh = BIO_new(BIO_s_mem());
  if (fresh == nullptr) return bio;
  if (input) {
    BIO_set_mem_eof_return(fresh, -1);
    SSL_set0_rbio(ssl_, fresh);  // frees the old one
  } else {
    SSL_set0_wbio(ssl_, fresh);
  }
  return fresh;
}

bool TlsStream::buffered() const {
  return ssl_ != nullptr && (SSL_pending(ssl_) > 0 || BIO_ctrl_pending(rbio_) > 0);
}

bool TlsStream::handshakeDone() const { return ssl_ != nullptr && SSL_is_init_finished(ssl_); }

std::string TlsStream::peerCommonName() const {
  if (!peerVerified()) return {};
  X509* cert = SSL_get0_peer_certificate(ssl_);
  X509_NAME* name = X509_get_subject_name(cert);
  int at = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (at < 0) return {};
  ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, at));
  unsigned char* utf8 = nullptr;
  int n = ASN1_STRING_to_UTF8(&utf8, data);
  if (n < 0) return {};
  std::string cn(reinterpret_cast<char*>(utf8), size_t(n));
  OPENSSL_free(utf8);
  if (cn.find('\0') != std::string::npos) return {};  // an embedded NUL is a forgery attempt
  return cn;
}

bool TlsStream::peerVerified() const {
  return ssl_ != nullptr && SSL_get0_peer_certificate(ssl_) != nullptr &&
         SSL_get_verify_result(ssl_) == X509_V_OK;
}

size_t TlsStream::bioCapacity() const {
  size_t total = 0;
  for (BIO* b : {rbio_, wbio_}) {
    BUF_MEM* mem = nullptr;
    if (b != nullptr) BIO_get_mem_ptr(b, &mem);
    if (mem != nullptr) total += mem->max;
  }
  return total;
}

std::string TlsStream::alpn() const {
  if (ssl_ == nullptr) return {};
  const unsigned char* p = nullptr;
  unsigned int n = 0;
  SSL_get0_alpn_selected(ssl_, &p, &n);
  return p != nullptr ? std::string(reinterpret_cast<const char*>(p), n) : std::string();
}

std::string TlsStream::version() const { return ssl_ != nullptr ? SSL_get_version(ssl_) : ""; }

std::string TlsStream::cipher() const {
  const char* c = ssl_ != nullptr ? SSL_get_cipher_name(ssl_) : nullptr;
  return c != nullptr ? c : "";
}

}  // namespace sluice::net
