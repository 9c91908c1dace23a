// Authentication math for PostgreSQL's wire protocol: MD5 password hashing, SCRAM-SHA-256 secrets
// in pg_authid's format, and both ends of a SCRAM-SHA-256 exchange (RFC 5802/7677 as PostgreSQL
// speaks it, without channel binding). Pure: no I/O; all cryptography is OpenSSL 3.
//
// Ownership and threads: the free functions are thread-safe. A ScramServer or ScramClient holds
// the state of one exchange; it is owned by the connection doing that exchange and used from that
// connection's thread only (not thread-safe). Every message handler takes untrusted input and
// answers malformed input with an error, never a crash.
//
// Passwords: PostgreSQL normalizes SCRAM passwords with SASLprep (RFC 4013); we do not, and use
// the password's bytes unchanged. That agrees with PostgreSQL for ASCII passwords, for passwords
// that are not valid UTF-8 (PostgreSQL then falls back to the raw bytes too) and for UTF-8 text
// that SASLprep leaves alone; other non-ASCII passwords (non-NFKC text, non-ASCII spaces, ...)
// produce keys PostgreSQL will not accept.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"

namespace sluice::protocol {

// ---- MD5 (PostgreSQL's scheme) ----

// 32 lowercase hex digits.
std::string md5Hex(std::string_view data);
// What pg_authid stores for an MD5 password: "md5" + md5Hex(password + user).
std::string md5PasswordSecret(std::string_view user, std::string_view password);
// The PasswordMessage answering AuthenticationMD5Password:
// "md5" + md5Hex(md5Hex(password + user) + salt). Takes the stored secret ("md5" + 32 hex, see
// md5PasswordSecret); a server checks a client's answer against this with constantTimeEquals.
std::string md5SaltedResponse(std::string_view md5_secret, const uint8_t salt[4]);

// Equal length and bytes, in time that depends only on the length.
bool constantTimeEquals(std::string_view a, std::string_view b);
// n bytes from OpenSSL's CSPRNG; aborts if it cannot deliver (nothing safe to fall back to).
std::string randomBytes(size_t n);
// The salt of the mock SCRAM exchange for a user without a SCRAM secret (unknown, or a plain
// password): 16 bytes of HMAC-SHA-256(a random key drawn once per process, user), as
// PostgreSQL's mock authentication does with its cluster nonce. The same user always gets the
// same salt from one process, and nobody without the key can tell it from a real one.
std::string mockScramSalt(std::string_view user);
// PostgreSQL's default iteration count for new SCRAM secrets, used by the mock exchange.
inline constexpr int kMockScramIterations = 4096;

// Standard base64 with padding, as PostgreSQL writes it. Decoding is strict: no whitespace, no
// missing or misplaced padding.
std::string base64Encode(std::string_view data);
std::optional<std::string> base64Decode(std::string_view text);

// ---- SCRAM-SHA-256 secrets ----

using ScramKey = std::array<uint8_t, 32>;

// A SCRAM-SHA-256 verifier as pg_authid stores it. A value type.
struct ScramSecret {
  int iterations = 4096;
  std::string salt;  // raw bytes
  ScramKey stored_key{};
  ScramKey server_key{};
  // "SCRAM-SHA-256$<iter>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>"
  std::string toString() const;
};
// nullopt unless text is exactly the format above, with iterations > 0, a non-empty salt and
// 32-byte keys.
std::optional<ScramSecret> parseScramSecret(std::string_view text);
// iterations must be > 0 (aborts otherwise: a caller's bug, never network input).
ScramSecret scramSecretFromPassword(std::string_view password, std::string_view salt,
                                    int iterations);

// What kind of secret an auth_file line or a [databases] password= holds.
enum class SecretKind { kPlain, kMd5, kScram };
// "md5" + 32 lowercase hex -> kMd5 (PostgreSQL's test); parses as SCRAM -> kScram; else kPlain.
SecretKind secretKind(std::string_view secret);

// ---- SCRAM-SHA-256 exchange ----

// Server side: sluice verifying a client against a stored secret. Accepts the gs2 headers "n,,"
// and "y,,"; channel binding ("p=..."), an authzid ("a=...") and mandatory extensions ("m=...")
// are errors. Like PostgreSQL, ignores the user name in client-first (the startup packet's user
// is the one that counts). Use once: after an error every later call fails.
class ScramServer {
 public:
  explicit ScramServer(ScramSecret secret);

  // client-first-message -> server-first-message "r=<nonce>,s=<salt>,i=<iterations>".
  Result<std::string> handleClientFirst(std::string_view client_first);
  // client-final-message -> server-final-message "v=<ServerSignature>". Errors on a malformed
  // message, a nonce that is not ours, or a wrong proof (see authFailed()).
  Result<std::string> handleClientFinal(std::string_view client_final);

  // After a successful handleClientFinal: the ClientKey recovered from the proof
  // (proof XOR HMAC(StoredKey, AuthMessage)), so sluice can log into PostgreSQL as this user with
  // ScramClient::fromKeys without knowing the password (as PgBouncer does).
  const std::optional<ScramKey>& clientKey() const { return client_key_; }
  // True when handleClientFinal failed because of a wrong proof or nonce: PostgreSQL reports
  // that as 28P01 (password authentication failed), a malformed message as 08P01.
  bool authFailed() const { return auth_failed_; }

  // Test hook: use this server nonce (printable, no ',') instead of 18 random bytes in base64.
  // Call before handleClientFirst.
  void setNonceForTest(std::string server_nonce) { server_nonce_ = std::move(server_nonce); }

 private:
  enum class State { kWaitingClientFirst, kWaitingClientFinal, kDone, kFailed };
  Status fail(std::string message);

  ScramSecret secret_;
  State state_ = State::kWaitingClientFirst;
  std::string server_nonce_;  // our part of the nonce; random unless set for a test
  std::string gs2_header_;    // "n,," or "y,,"; client-final's c= must echo it
  std::string nonce_;         // client nonce + server nonce
  std::string auth_message_;  // client-first-bare "," server-first "," (proof-less final added)
  std::optional<ScramKey> client_key_;
  bool auth_failed_ = false;
};

// Client side: sluice logging into PostgreSQL. Sends gs2 header "n,," and an empty user name, as
// libpq does. Use once, in order: clientFirst, handleServerFirst, handleServerFinal.
class ScramClient {
 public:
  static ScramClient fromPassword(std::string password);
  // When only keys are known (a ClientKey recovered by ScramServer plus the secret's ServerKey).
  // Works only if PostgreSQL's secret for the user is the one the keys came from (same salt and
  // iterations); the salt and iterations the server sends are then not needed.
  static ScramClient fromKeys(ScramKey client_key, ScramKey server_key);

  // client-first-message "n,,n=,r=<nonce>".
  std::string clientFirst();
  // server-first-message -> client-final-message "c=biws,r=<nonce>,p=<proof>". Built
  // fromPassword, derives the keys from the salt and iterations the server sent.
  Result<std::string> handleServerFirst(std::string_view msg);
  // Verifies the server signature in "v=..."; "e=..." becomes an error carrying the server's text.
  Status handleServerFinal(std::string_view msg);

  // Test hook: use this client nonce (printable, no ',') and user name in client-first instead of
  // a random nonce and "". Call before clientFirst.
  void setNonceForTest(std::string client_nonce, std::string user = "") {
    nonce_ = std::move(client_nonce);
    user_ = std::move(user);
  }

 private:
  enum class State { kInitial, kWaitingServerFirst, kWaitingServerFinal, kDone, kFailed };
  ScramClient() = default;
  Status fail(std::string message);

  std::optional<std::string> password_;  // set when built fromPassword; keys derived later
  ScramKey client_key_{};
  ScramKey server_key_{};
  State state_ = State::kInitial;
  std::string nonce_;  // client nonce
  std::string user_;
  std::string client_first_bare_;
  ScramKey server_signature_{};  // what server-final's v= must carry
};

}  // namespace sluice::protocol
