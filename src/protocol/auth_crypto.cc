#include "protocol/auth_crypto.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace sluice::protocol {
namespace {

constexpr std::string_view kScramPrefix = "SCRAM-SHA-256$";
constexpr size_t kRawNonceLength = 18;  // PostgreSQL's and libpq's: 24 base64 characters

// OpenSSL failing on in-memory work with built-in algorithms means a broken library or a FIPS
// provider without MD5; neither leaves a safe way on.
[[noreturn]] void fatal(const char* what) {
  std::fprintf(stderr, "sluice: fatal: OpenSSL %s failed\n", what);
  std::abort();
}

const unsigned char* bytes(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}
std::string_view view(const ScramKey& key) {
  return {reinterpret_cast<const char*>(key.data()), key.size()};
}

ScramKey sha256(std::string_view data) {
  ScramKey out;
  if (EVP_Digest(data.data(), data.size(), out.data(), nullptr, EVP_sha256(), nullptr) != 1) {
    fatal("SHA-256");
  }
  return out;
}

ScramKey hmacSha256(const ScramKey& key, std::string_view data) {
  ScramKey out;
  unsigned int len = 0;
  if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), bytes(data), data.size(),
           out.data(), &len) == nullptr) {
    fatal("HMAC-SHA-256");
  }
  return out;
}

ScramKey xorKeys(const ScramKey& a, const ScramKey& b) {
  ScramKey out;
  for (size_t i = 0; i < out.size(); ++i) out[i] = a[i] ^ b[i];
  return out;
}

struct ScramKeys {
  ScramKey client_key;
  ScramKey server_key;
};

// RFC 5802: SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, i); the keys are HMACs of it.
ScramKeys deriveKeys(std::string_view password, std::string_view salt, int iterations) {
  if (iterations < 1) fatal("PBKDF2 (iterations < 1)");
  ScramKey salted;
  if (PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()), bytes(salt),
                        static_cast<int>(salt.size()), iterations, EVP_sha256(),
                        static_cast<int>(salted.size()), salted.data()) != 1) {
    fatal("PBKDF2");
  }
  return {hmacSha256(salted, "Client Key"), hmacSha256(salted, "Server Key")};
}

std::optional<ScramKey> decodeKey(std::string_view text) {
  std::optional<std::string> raw = base64Decode(text);
  if (!raw || raw->size() != ScramKey().size()) return std::nullopt;
  ScramKey key;
  std::copy(raw->begin(), raw->end(), key.begin());
  return key;
}

// A positive decimal int, nothing else.
std::optional<int> parsePositiveInt(std::string_view text) {
  int value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || value < 1) {
    return std::nullopt;
  }
  return value;
}

bool isBase64Char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
         c == '/';
}

// RFC 5802: printable ASCII except ','.
bool isValidNonce(std::string_view nonce) {
  if (nonce.empty()) return false;
  for (char c : nonce) {
    if (c < 0x21 || c > 0x7e || c == ',') return false;
  }
  return true;
}

std::string makeNonce() { return base64Encode(randomBytes(kRawNonceLength)); }

struct Attribute {
  char name;
  std::string_view value;
};

// Splits "a=x,b=y" into attributes; nullopt unless every part is "<letter>=<value>". Values never
// contain ',' (user names escape it as "=2C"), so a plain split is exact.
std::optional<std::vector<Attribute>> splitAttributes(std::string_view msg) {
  std::vector<Attribute> attrs;
  while (true) {
    size_t comma = msg.find(',');
    std::string_view part = msg.substr(0, comma);
    if (part.size() < 2 || part[1] != '=' ||
        !((part[0] >= 'a' && part[0] <= 'z') || (part[0] >= 'A' && part[0] <= 'Z'))) {
      return std::nullopt;
    }
    attrs.push_back({part[0], part.substr(2)});
    if (comma == std::string_view::npos) return attrs;
    msg.remove_prefix(comma + 1);
  }
}

// RFC 5802 saslname: ',' and '=' escaped.
std::string saslName(std::string_view name) {
  std::string out;
  for (char c : name) {
    if (c == ',') {
      out += "=2C";
    } else if (c == '=') {
      out += "=3D";
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

// ---- MD5 ----

std::string md5Hex(std::string_view data) {
  unsigned char digest[16];
  if (EVP_Digest(data.data(), data.size(), digest, nullptr, EVP_md5(), nullptr) != 1) fatal("MD5");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(32);
  for (unsigned char b : digest) {
    out += kHex[b >> 4];
    out += kHex[b & 0xf];
  }
  return out;
}

std::string md5PasswordSecret(std::string_view user, std::string_view password) {
  std::string input(password);
  input += user;
  return "md5" + md5Hex(input);
}

std::string md5SaltedResponse(std::string_view md5_secret, const uint8_t salt[4]) {
  if (md5_secret.starts_with("md5")) md5_secret.remove_prefix(3);
  std::string input(md5_secret);
  input.append(reinterpret_cast<const char*>(salt), 4);
  return "md5" + md5Hex(input);
}

bool constantTimeEquals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string mockScramSalt(std::string_view user) {
  static const std::string kKey = randomBytes(32);  // per process; thread-safe initialization
  ScramKey key;
  std::memcpy(key.data(), kKey.data(), key.size());
  ScramKey mac = hmacSha256(key, user);
  return std::string(reinterpret_cast<const char*>(mac.data()), 16);
}

std::string randomBytes(size_t n) {
  std::string out(n, '\0');
  if (n > 0 && RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) != 1) {
    fatal("RAND_bytes");
  }
  return out;
}

std::string base64Encode(std::string_view data) {
  std::string out(4 * ((data.size() + 2) / 3) + 1, '\0');  // +1: EVP_EncodeBlock writes a NUL
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), bytes(data),
                          static_cast<int>(data.size()));
  out.resize(n);
  return out;
}

std::optional<std::string> base64Decode(std::string_view text) {
  // EVP_DecodeBlock skips whitespace and returns padding as zero bytes, so check strictly first.
  if (text.size() % 4 != 0) return std::nullopt;
  size_t padding = 0;
  if (!text.empty() && text.back() == '=') padding = text[text.size() - 2] == '=' ? 2 : 1;
  for (size_t i = 0; i < text.size() - padding; ++i) {
    if (!isBase64Char(text[i])) return std::nullopt;
  }
  std::string out(text.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()), bytes(text),
                          static_cast<int>(text.size()));
  if (n < 0) return std::nullopt;
  out.resize(static_cast<size_t>(n) - padding);
  return out;
}

// ---- SCRAM secrets ----

std::string ScramSecret::toString() const {
  return std::string(kScramPrefix) + std::to_string(iterations) + ":" + base64Encode(salt) + "$" +
         base64Encode(view(stored_key)) + ":" + base64Encode(view(server_key));
}

std::optional<ScramSecret> parseScramSecret(std::string_view text) {
  if (!text.starts_with(kScramPrefix)) return std::nullopt;
  text.remove_prefix(kScramPrefix.size());
  size_t dollar = text.find('$');
  if (dollar == std::string_view::npos) return std::nullopt;
  std::string_view params = text.substr(0, dollar);  // "<iter>:<salt>"
  std::string_view keys = text.substr(dollar + 1);   // "<StoredKey>:<ServerKey>"
  size_t params_colon = params.find(':');
  size_t keys_colon = keys.find(':');
  if (params_colon == std::string_view::npos || keys_colon == std::string_view::npos) {
    return std::nullopt;
  }
  std::optional<int> iterations = parsePositiveInt(params.substr(0, params_colon));
  std::optional<std::string> salt = base64Decode(params.substr(params_colon + 1));
  std::optional<ScramKey> stored_key = decodeKey(keys.substr(0, keys_colon));
  std::optional<ScramKey> server_key = decodeKey(keys.substr(keys_colon + 1));
  if (!iterations || !salt || salt->empty() || !stored_key || !server_key) return std::nullopt;
  return ScramSecret{*iterations, std::move(*salt), *stored_key, *server_key};
}

ScramSecret scramSecretFromPassword(std::string_view password, std::string_view salt,
                                    int iterations) {
  ScramKeys keys = deriveKeys(password, salt, iterations);
  return ScramSecret{iterations, std::string(salt), sha256(view(keys.client_key)), keys.server_key};
}

SecretKind secretKind(std::string_view secret) {
  if (secret.size() == 35 && secret.starts_with("md5") &&
      secret.find_first_not_of("0123456789abcdef", 3) == std::string_view::npos) {
    return SecretKind::kMd5;
  }
  if (parseScramSecret(secret)) return SecretKind::kScram;
  return SecretKind::kPlain;
}

// ---- ScramServer ----

ScramServer::ScramServer(ScramSecret secret) : secret_(std::move(secret)) {}

Status ScramServer::fail(std::string message) {
  state_ = State::kFailed;
  return Status::error("SCRAM: " + message);
}

Result<std::string> ScramServer::handleClientFirst(std::string_view msg) {
  if (state_ != State::kWaitingClientFirst) return fail("client-first-message out of order");
  // gs2-header: cbind flag "n" or "y", then an empty authzid.
  if (msg.starts_with("p=")) return fail("channel binding is not supported");
  if (!msg.starts_with("n,") && !msg.starts_with("y,")) {
    return fail("malformed client-first-message (bad gs2 header)");
  }
  if (msg.substr(2).starts_with("a=")) return fail("authorization identity is not supported");
  if (msg.size() < 3 || msg[2] != ',') {
    return fail("malformed client-first-message (bad gs2 header)");
  }
  gs2_header_ = std::string(msg.substr(0, 3));
  std::string_view bare = msg.substr(3);

  std::optional<std::vector<Attribute>> attrs = splitAttributes(bare);
  if (!attrs) return fail("malformed client-first-message");
  if ((*attrs)[0].name == 'm') return fail("mandatory extensions are not supported");
  // n= (ignored, as in PostgreSQL), r=, then optional extensions (ignored).
  if (attrs->size() < 2 || (*attrs)[0].name != 'n' || (*attrs)[1].name != 'r') {
    return fail("malformed client-first-message (expected n= and r=)");
  }
  std::string_view client_nonce = (*attrs)[1].value;
  if (!isValidNonce(client_nonce)) return fail("malformed client-first-message (bad nonce)");

  if (server_nonce_.empty()) server_nonce_ = makeNonce();
  nonce_ = std::string(client_nonce) + server_nonce_;
  std::string server_first = "r=" + nonce_ + ",s=" + base64Encode(secret_.salt) +
                             ",i=" + std::to_string(secret_.iterations);
  auth_message_ = std::string(bare) + "," + server_first + ",";
  state_ = State::kWaitingClientFinal;
  return server_first;
}

Result<std::string> ScramServer::handleClientFinal(std::string_view msg) {
  if (state_ != State::kWaitingClientFinal) return fail("client-final-message out of order");
  // c=<gs2 header>,r=<nonce>[,extensions],p=<proof>
  std::optional<std::vector<Attribute>> attrs = splitAttributes(msg);
  if (!attrs || attrs->size() < 3 || (*attrs)[0].name != 'c' || (*attrs)[1].name != 'r' ||
      attrs->back().name != 'p' ||
      std::any_of(attrs->begin(), attrs->end() - 1,
                  [](const Attribute& a) { return a.name == 'p'; })) {
    return fail("malformed client-final-message");
  }
  std::optional<std::string> cbind = base64Decode((*attrs)[0].value);
  if (!cbind || *cbind != gs2_header_) return fail("unexpected channel-binding data");
  std::optional<ScramKey> proof = decodeKey(attrs->back().value);
  if (!proof) return fail("malformed client-final-message (bad proof)");

  if (!constantTimeEquals((*attrs)[1].value, nonce_)) {
    auth_failed_ = true;
    return fail("nonce mismatch");
  }
  // AuthMessage ends with the final message up to, not including, ",p=".
  std::string_view without_proof = msg.substr(0, attrs->back().value.data() - msg.data() - 3);
  auth_message_ += without_proof;
  ScramKey client_key = xorKeys(*proof, hmacSha256(secret_.stored_key, auth_message_));
  if (!constantTimeEquals(view(sha256(view(client_key))), view(secret_.stored_key))) {
    auth_failed_ = true;
    return fail("invalid client proof");
  }
  client_key_ = client_key;
  state_ = State::kDone;
  return "v=" + base64Encode(view(hmacSha256(secret_.server_key, auth_message_)));
}

// ---- ScramClient ----

ScramClient ScramClient::fromPassword(std::string password) {
  ScramClient client;
  client.password_ = std::move(password);
  return client;
}

ScramClient ScramClient::fromKeys(ScramKey client_key, ScramKey server_key) {
  ScramClient client;
  client.client_key_ = client_key;
  client.server_key_ = server_key;
  return client;
}

Status ScramClient::fail(std::string message) {
  state_ = State::kFailed;
  return Status::error("SCRAM: " + message);
}

std::string ScramClient::clientFirst() {
  if (state_ == State::kInitial) {
    if (nonce_.empty()) nonce_ = makeNonce();
    client_first_bare_ = "n=" + saslName(user_) + ",r=" + nonce_;
    state_ = State::kWaitingServerFirst;
  }
  return "n,," + client_first_bare_;
}

Result<std::string> ScramClient::handleServerFirst(std::string_view msg) {
  if (state_ != State::kWaitingServerFirst) return fail("server-first-message out of order");
  std::optional<std::vector<Attribute>> attrs = splitAttributes(msg);
  if (attrs && (*attrs)[0].name == 'm') return fail("mandatory extensions are not supported");
  // Exactly r=,s=,i= (libpq rejects anything after i= too).
  if (!attrs || attrs->size() != 3 || (*attrs)[0].name != 'r' || (*attrs)[1].name != 's' ||
      (*attrs)[2].name != 'i') {
    return fail("malformed server-first-message");
  }
  std::string_view nonce = (*attrs)[0].value;
  if (!nonce.starts_with(nonce_) || nonce.size() == nonce_.size() || !isValidNonce(nonce)) {
    return fail("server nonce does not extend the client nonce");
  }
  std::optional<std::string> salt = base64Decode((*attrs)[1].value);
  std::optional<int> iterations = parsePositiveInt((*attrs)[2].value);
  if (!salt || salt->empty() || !iterations) {
    return fail("malformed server-first-message (bad salt or iterations)");
  }
  if (password_) {
    ScramKeys keys = deriveKeys(*password_, *salt, *iterations);
    client_key_ = keys.client_key;
    server_key_ = keys.server_key;
  }
  std::string final_without_proof = "c=biws,r=" + std::string(nonce);  // biws = base64("n,,")
  std::string auth_message =
      client_first_bare_ + "," + std::string(msg) + "," + final_without_proof;
  ScramKey proof = xorKeys(client_key_, hmacSha256(sha256(view(client_key_)), auth_message));
  server_signature_ = hmacSha256(server_key_, auth_message);
  state_ = State::kWaitingServerFinal;
  return final_without_proof + ",p=" + base64Encode(view(proof));
}

Status ScramClient::handleServerFinal(std::string_view msg) {
  if (state_ != State::kWaitingServerFinal) return fail("server-final-message out of order");
  if (msg.starts_with("e=")) return fail("server error: " + std::string(msg.substr(2)));
  std::optional<ScramKey> signature;
  if (msg.starts_with("v=")) signature = decodeKey(msg.substr(2));
  if (!signature) return fail("malformed server-final-message");
  if (!constantTimeEquals(view(*signature), view(server_signature_))) {
    return fail("invalid server signature");
  }
  state_ = State::kDone;
  return Status::ok();
}

}  // namespace sluice::protocol
