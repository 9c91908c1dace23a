#include "net/tls.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace sluice::net {
namespace {

// A self-signed certificate for CN=localhost (its own CA) in a temporary directory.
class Certs {
 public:
  Certs() {
    char tmpl[] = "/tmp/sluice-tls-test-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    EVP_PKEY* key = EVP_EC_gen("P-256");
    X509* x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME* name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
    X509_set_issuer_name(x, name);
    X509_sign(x, key, EVP_sha256());
    FILE* f = std::fopen(cert().c_str(), "w");
    PEM_write_X509(f, x);
    std::fclose(f);
    f = std::fopen(key_path().c_str(), "w");
    PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
    std::fclose(f);
    // A second key that matches nothing.
    EVP_PKEY* other = EVP_EC_gen("P-256");
    f = std::fopen(other_key().c_str(), "w");
    PEM_write_PrivateKey(f, other, nullptr, nullptr, 0, nullptr, nullptr);
    std::fclose(f);
    EVP_PKEY_free(other);
    X509_free(x);
    EVP_PKEY_free(key);
  }
  ~Certs() { std::filesystem::remove_all(dir_); }
  std::string cert() const { return dir_ + "/cert.pem"; }
  std::string key_path() const { return dir_ + "/key.pem"; }
  std::string other_key() const { return dir_ + "/other.pem"; }

 private:
  std::string dir_;
};

TlsOptions serverOptions(const Certs& c) {
  TlsOptions o;
  o.accept = true;
  o.cert_file = c.cert();
  o.key_file = c.key_path();
  return o;
}

TlsOptions clientOptions(const Certs& c) {
  TlsOptions o;
  o.ca_file = c.cert();
  o.verify_peer = true;
  return o;
}

std::string createError(const TlsOptions& o) {
  try {
    TlsContext::create(o);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

TEST(TlsContextTest, SettingErrorsNameWhatIsWrong) {
  Certs c;
  TlsOptions o = serverOptions(c);
  o.protocols = "tlsv1.0,tlsv1.2";
  EXPECT_NE(createError(o).find("leave a gap"), std::string::npos) << createError(o);
  o.protocols = "tlsv2";
  EXPECT_NE(createError(o).find("unknown TLS protocol 'tlsv2'"), std::string::npos);
  o = serverOptions(c);
  o.cert_file = "/nonexistent/cert.pem";
  EXPECT_NE(createError(o).find("could not load the certificate file /nonexistent/cert.pem"),
            std::string::npos);
  o = serverOptions(c);
  o.key_file = c.other_key();
  EXPECT_NE(createError(o).find("could not load the key file"), std::string::npos);
  o = serverOptions(c);
  o.ciphers = "NO-SUCH-CIPHER";
  EXPECT_NE(createError(o).find("bad TLS cipher list 'NO-SUCH-CIPHER'"), std::string::npos);
  o = serverOptions(c);
  o.verify_peer = true;  // without a CA
  EXPECT_NE(createError(o).find("needs a CA file"), std::string::npos);
  EXPECT_EQ(createError(serverOptions(c)), "");
}

// Two streams over a socketpair, pumped by hand.
class Pair {
 public:
  Pair(std::shared_ptr<const TlsContext> server_ctx, std::shared_ptr<const TlsContext> client_ctx,
       const std::string& host, bool check_name)
      : server(std::move(server_ctx)), client(std::move(client_ctx), host, check_name) {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) throw std::runtime_error("socketpair");
    sfd = fds[0];
    cfd = fds[1];
    ::fcntl(sfd, F_SETFL, O_NONBLOCK);
    ::fcntl(cfd, F_SETFL, O_NONBLOCK);
  }
  ~Pair() {
    ::close(sfd);
    ::close(cfd);
  }
  static void sendAll(int fd, const std::string& bytes) {
    size_t done = 0;
    while (done < bytes.size()) {
      ssize_t n = ::send(fd, bytes.data() + done, bytes.size() - done, 0);
      ASSERT_GT(n, 0);
      done += size_t(n);
    }
  }
  // One read on a side; returns false when TLS failed.
  static bool pump(TlsStream& s, int fd, std::string* got, size_t room = 4096) {
    std::string buf(room, '\0');
    bool drained = false;
    ssize_t n = s.read(fd, buf.data(), room, &drained);
    int err = errno;
    std::string out;
    s.takeOutput(&out);
    sendAll(fd, out);
    if (n > 0) got->append(buf.data(), size_t(n));
    return n > 0 || (n < 0 && err == EAGAIN);
  }
  bool handshake() {
    std::string ignored;
    for (int i = 0; i < 20; ++i) {
      if (!pump(client, cfd, &ignored) || !pump(server, sfd, &ignored)) return false;
      if (client.handshakeDone() && server.handshakeDone()) return true;
    }
    return false;
  }

  TlsStream server;
  TlsStream client;
  int sfd = -1;
  int cfd = -1;
};

TEST(TlsStreamTest, HandshakeVerifiesAndCarriesDataBothWays) {
  Certs c;
  Pair p(TlsContext::create(serverOptions(c)), TlsContext::create(clientOptions(c)), "localhost",
         true);
  ASSERT_TRUE(p.handshake()) << p.client.error() << p.server.error();
  EXPECT_TRUE(p.client.peerVerified());
  EXPECT_EQ(p.client.peerCommonName(), "localhost");
  EXPECT_EQ(p.client.version(), "TLSv1.3");
  EXPECT_FALSE(p.server.peerVerified());  // the client showed no certificate

  // 1 MB from client to server in 64 KB writes, read as it goes.
  std::string sent;
  std::string got;
  for (int i = 0; i < 16; ++i) {
    std::string chunk(64 * 1024, char('a' + i));
    std::string cipher;
    ASSERT_TRUE(p.client.write(chunk, &cipher));
    sent += chunk;
    size_t at = 0;
    while (at < cipher.size()) {
      ssize_t n = ::send(p.cfd, cipher.data() + at, cipher.size() - at, 0);
      if (n > 0) at += size_t(n);
      while (Pair::pump(p.server, p.sfd, &got, 16 * 1024) && errno != EAGAIN) {
      }
    }
  }
  for (int i = 0; i < 100 && got.size() < sent.size(); ++i) Pair::pump(p.server, p.sfd, &got);
  EXPECT_EQ(got.size(), sent.size());
  EXPECT_TRUE(got == sent);
  // Idle again (the last read found the socket empty): the large transfer's memory is gone.
  EXPECT_LE(p.server.bioCapacity(), size_t{16} * 1024);
  EXPECT_LE(p.client.bioCapacity(), size_t{16} * 1024);

  // Server to client, and a read smaller than a record leaves the rest buffered inside.
  std::string cipher;
  ASSERT_TRUE(p.server.write(std::string(300, 'z'), &cipher));
  Pair::sendAll(p.sfd, cipher);
  std::string small;
  ASSERT_TRUE(Pair::pump(p.client, p.cfd, &small, 10));
  EXPECT_EQ(small, std::string(10, 'z'));
  EXPECT_TRUE(p.client.buffered());
  bool drained = false;
  char rest[400];
  EXPECT_EQ(p.client.read(p.cfd, rest, sizeof rest, &drained), 290);
  EXPECT_FALSE(p.client.buffered());
}

TEST(TlsStreamTest, VerifyFullRefusesAnotherName) {
  Certs c;
  Pair p(TlsContext::create(serverOptions(c)), TlsContext::create(clientOptions(c)), "otherhost",
         true);
  EXPECT_FALSE(p.handshake());
  EXPECT_NE(p.client.error().find("certificate verify failed"), std::string::npos)
      << p.client.error();
  // verify-ca (no name check) accepts the same certificate.
  Pair q(TlsContext::create(serverOptions(c)), TlsContext::create(clientOptions(c)), "otherhost",
         false);
  EXPECT_TRUE(q.handshake()) << q.client.error();
}

TEST(TlsStreamTest, PeerClosingShowsAsEndOfStream) {
  Certs c;
  Pair p(TlsContext::create(serverOptions(c)), TlsContext::create(clientOptions(c)), "localhost",
         true);
  ASSERT_TRUE(p.handshake());
  ::shutdown(p.cfd, SHUT_WR);
  bool drained = false;
  char buf[16];
  EXPECT_EQ(p.server.read(p.sfd, buf, sizeof buf, &drained), 0);
}

}  // namespace
}  // namespace sluice::net
