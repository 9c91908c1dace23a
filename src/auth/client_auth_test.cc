// Drives ClientAuth the way a client (libpq) would: read the requests in Step::out, answer with
// the payload of a 'p' message, and check the outcome for every auth_type and kind of secret.
#include "auth/client_auth.h"

#include <gtest/gtest.h>

#include <cctype>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/auth_crypto.h"
#include "protocol/wire.h"

namespace sluice::auth {
namespace {

using namespace std::string_literals;
using config::AuthType;
using Outcome = ClientAuth::Outcome;

constexpr std::string_view kUser = "alice";
constexpr std::string_view kPassword = "correct horse";
constexpr std::string_view kWrongPassword = "battery staple";

// RFC 7677's example password "pencil" as PostgreSQL stores it, and the ClientKey it derives
// (the same values as in auth_crypto_test.cc, computed there with python3 hashlib/hmac).
constexpr std::string_view kPencilSecret =
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
    "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
constexpr std::string_view kPencilClientKeyHex =
    "a60fc923d67e8644a92d16b96eda5ef4656b0c725c484374be25535576996e8b";

std::string hex(const protocol::ScramKey& key) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (uint8_t b : key) {
    out += kHex[b >> 4];
    out += kHex[b & 0xf];
  }
  return out;
}

std::string plainSecret() { return std::string(kPassword); }
// What pg_authid holds for an MD5 password, built by hand rather than with md5PasswordSecret.
std::string md5Secret() {
  return "md5" + protocol::md5Hex(std::string(kPassword) + std::string(kUser));
}
std::string scramSecret() {
  return protocol::scramSecretFromPassword(kPassword, "0123456789abcdef", 4096).toString();
}

std::string be32(uint32_t v) {
  std::string out;
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(char(v >> shift));
  return out;
}

// One 'R' message taken apart.
struct AuthRequest {
  int32_t code = -1;
  std::string extra;  // what follows the code
};

// Splits Step::out into 'R' messages; fails the test on anything else or on bad framing.
std::vector<AuthRequest> authRequests(std::string_view out) {
  std::vector<AuthRequest> reqs;
  while (!out.empty()) {
    auto h = protocol::peekHeader(out);
    EXPECT_TRUE(h) << "torn message";
    if (!h) break;
    EXPECT_EQ(h->type, 'R');
    EXPECT_GE(h->length, 8u);
    EXPECT_LE(h->total(), out.size());
    if (h->length < 8 || h->total() > out.size()) break;
    protocol::Reader r(out.substr(protocol::kHeaderSize, h->length - 4));
    AuthRequest req;
    req.code = r.int32();
    req.extra = std::string(r.rest());
    reqs.push_back(std::move(req));
    out.remove_prefix(h->total());
  }
  return reqs;
}

std::string cstringPayload(std::string_view s) { return std::string(s) + '\0'; }

std::string saslInitialPayload(std::string_view mechanism, std::string_view data) {
  return std::string(mechanism) + '\0' + be32(uint32_t(data.size())) + std::string(data);
}

// What happened in one login attempt.
struct Exchange {
  std::vector<int32_t> request_codes;  // the first request of each step, in order
  ClientAuth::Step last;
  bool server_signature_ok = false;  // SCRAM only: the server proved it knows the secret
};

// Plays the client's side with `password` until ClientAuth returns kOk or kFailed.
Exchange login(ClientAuth& auth, std::string_view user, std::string_view password) {
  Exchange ex;
  ClientAuth::Step step = auth.start();
  std::optional<protocol::ScramClient> scram;
  for (int round = 0; round < 5 && step.outcome == Outcome::kContinue; ++round) {
    auto reqs = authRequests(step.out);
    EXPECT_EQ(reqs.size(), 1u);
    if (reqs.empty()) break;
    const AuthRequest& req = reqs[0];
    ex.request_codes.push_back(req.code);
    std::string payload;
    switch (req.code) {
      case protocol::kAuthCleartext:
        EXPECT_EQ(req.extra, "");
        payload = cstringPayload(password);
        break;
      case protocol::kAuthMd5: {
        EXPECT_EQ(req.extra.size(), 4u);
        if (req.extra.size() != 4) return ex;
        uint8_t salt[4];
        std::memcpy(salt, req.extra.data(), 4);
        std::string secret = "md5" + protocol::md5Hex(std::string(password) + std::string(user));
        payload = cstringPayload(protocol::md5SaltedResponse(secret, salt));
        break;
      }
      case protocol::kAuthSasl:
        EXPECT_EQ(req.extra, std::string("SCRAM-SHA-256\0\0", 15));
        scram.emplace(protocol::ScramClient::fromPassword(std::string(password)));
        payload = saslInitialPayload("SCRAM-SHA-256", scram->clientFirst());
        break;
      case protocol::kAuthSaslContinue: {
        EXPECT_TRUE(scram);
        if (!scram) return ex;
        auto final_msg = scram->handleServerFirst(req.extra);
        EXPECT_TRUE(final_msg) << final_msg.message();
        if (!final_msg) return ex;
        payload = *final_msg;  // SASLResponse: the data is the whole payload, no NUL
        break;
      }
      default:
        ADD_FAILURE() << "unexpected auth request " << req.code;
        return ex;
    }
    step = auth.onPasswordMessage(payload);
  }
  if (step.outcome == Outcome::kOk) {
    auto reqs = authRequests(step.out);
    EXPECT_FALSE(reqs.empty());
    if (!reqs.empty()) {
      EXPECT_EQ(reqs.back().code, protocol::kAuthOk);
    }
    if (scram) {
      // SASLFinal then AuthenticationOk, in one Step.
      EXPECT_EQ(reqs.size(), 2u);
      if (reqs.size() == 2) {
        EXPECT_EQ(reqs[0].code, protocol::kAuthSaslFinal);
        EXPECT_EQ(reqs[1].extra, "");
        ex.server_signature_ok = scram->handleServerFinal(reqs[0].extra).isOk();
      }
    } else {
      EXPECT_EQ(step.out, "R\0\0\0\x08\0\0\0\0"s);
    }
  }
  ex.last = std::move(step);
  return ex;
}

std::string badPasswordMessage(std::string_view user) {
  return "password authentication failed for user \"" + std::string(user) + "\"";
}

// The final ErrorResponse as a client sees it.
void expectPasswordFailure(const ClientAuth::Step& step, std::string_view user) {
  EXPECT_EQ(step.outcome, Outcome::kFailed);
  EXPECT_EQ(step.error.sqlstate, "28P01");
  EXPECT_EQ(step.error.message, badPasswordMessage(user));
  EXPECT_STREQ(step.error.severity, "FATAL");
  auto h = protocol::peekHeader(step.out);
  ASSERT_TRUE(h);
  EXPECT_EQ(h->type, 'E');
  ASSERT_EQ(h->total(), step.out.size());
  auto fields =
      protocol::parseErrorFields(std::string_view(step.out).substr(protocol::kHeaderSize));
  EXPECT_EQ(fields['S'], "FATAL");
  EXPECT_EQ(fields['C'], "28P01");
  EXPECT_EQ(fields['M'], badPasswordMessage(user));
}

enum class Kind { kPlain, kMd5, kScram };
const char* kindName(Kind k) {
  switch (k) {
    case Kind::kPlain:
      return "plain";
    case Kind::kMd5:
      return "md5";
    case Kind::kScram:
      return "scram";
  }
  return "?";
}
std::string secretOf(Kind k) {
  switch (k) {
    case Kind::kPlain:
      return plainSecret();
    case Kind::kMd5:
      return md5Secret();
    case Kind::kScram:
      return scramSecret();
  }
  return "";
}

// ---- the matrix: auth_type x secret kind ----

struct Case {
  AuthType type;
  Kind kind;
  int32_t first_request;  // what the client is asked for first
  bool right_password_works;
};

class ClientAuthMatrix : public testing::TestWithParam<Case> {};

TEST_P(ClientAuthMatrix, RightPassword) {
  const Case& c = GetParam();
  std::string secret = secretOf(c.kind);
  ClientAuth auth(c.type, std::string(kUser), &secret);
  Exchange ex = login(auth, kUser, kPassword);
  ASSERT_FALSE(ex.request_codes.empty());
  EXPECT_EQ(ex.request_codes[0], c.first_request);
  if (c.right_password_works) {
    EXPECT_EQ(ex.last.outcome, Outcome::kOk);
    if (c.first_request == protocol::kAuthSasl) {
      EXPECT_TRUE(ex.server_signature_ok);
      EXPECT_TRUE(auth.scramClientKey());
    }
  } else {
    expectPasswordFailure(ex.last, kUser);
  }
}

TEST_P(ClientAuthMatrix, WrongPassword) {
  const Case& c = GetParam();
  std::string secret = secretOf(c.kind);
  ClientAuth auth(c.type, std::string(kUser), &secret);
  Exchange ex = login(auth, kUser, kWrongPassword);
  ASSERT_FALSE(ex.request_codes.empty());
  EXPECT_EQ(ex.request_codes[0], c.first_request);
  expectPasswordFailure(ex.last, kUser);
}

TEST_P(ClientAuthMatrix, UnknownUserFailsLikeWrongPassword) {
  const Case& c = GetParam();
  std::string secret = secretOf(c.kind);
  ClientAuth known(c.type, std::string(kUser), &secret);
  Exchange wrong = login(known, kUser, kWrongPassword);

  ClientAuth unknown(c.type, std::string(kUser), nullptr);
  Exchange ex = login(unknown, kUser, kPassword);
  expectPasswordFailure(ex.last, kUser);
  // Indistinguishable at the end: same SQLSTATE, same text, same bytes on the wire.
  EXPECT_EQ(ex.last.error.sqlstate, wrong.last.error.sqlstate);
  EXPECT_EQ(ex.last.error.message, wrong.last.error.message);
  EXPECT_EQ(ex.last.out, wrong.last.out);
  // The exchange itself has the same shape, except where md5 auth upgrades a known user's
  // SCRAM secret to SCRAM (which an unknown user, having no secret, cannot get).
  if (!(c.type == AuthType::kMd5 && c.kind == Kind::kScram)) {
    EXPECT_EQ(ex.request_codes, wrong.request_codes);
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllTypesAndSecrets, ClientAuthMatrix,
    testing::Values(Case{AuthType::kPlain, Kind::kPlain, protocol::kAuthCleartext, true},
                    Case{AuthType::kPlain, Kind::kMd5, protocol::kAuthCleartext, true},
                    Case{AuthType::kPlain, Kind::kScram, protocol::kAuthCleartext, true},
                    Case{AuthType::kMd5, Kind::kPlain, protocol::kAuthMd5, true},
                    Case{AuthType::kMd5, Kind::kMd5, protocol::kAuthMd5, true},
                    // PgBouncer's rule: md5 with a SCRAM secret upgrades to SCRAM.
                    Case{AuthType::kMd5, Kind::kScram, protocol::kAuthSasl, true},
                    Case{AuthType::kScramSha256, Kind::kPlain, protocol::kAuthSasl, true},
                    // An md5 hash cannot verify a SCRAM proof.
                    Case{AuthType::kScramSha256, Kind::kMd5, protocol::kAuthSasl, false},
                    Case{AuthType::kScramSha256, Kind::kScram, protocol::kAuthSasl, true}),
    [](const testing::TestParamInfo<Case>& info) {
      std::string name = std::string(config::authTypeName(info.param.type)) + "_secret_" +
                         kindName(info.param.kind);
      for (char& ch : name) {
        if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
      }
      return name;
    });

// ---- golden first steps ----

TEST(ClientAuth, TrustAcceptsAtOnce) {
  for (Kind k : {Kind::kPlain, Kind::kMd5, Kind::kScram}) {
    std::string secret = secretOf(k);
    ClientAuth auth(AuthType::kTrust, std::string(kUser), &secret);
    ClientAuth::Step s = auth.start();
    EXPECT_EQ(s.outcome, Outcome::kOk) << kindName(k);
    EXPECT_EQ(s.out, "R\0\0\0\x08\0\0\0\0"s);
    EXPECT_FALSE(auth.scramClientKey());
  }
}

TEST(ClientAuth, AnyAcceptsAtOnce) {
  ClientAuth auth(AuthType::kAny, "whoever", nullptr);
  ClientAuth::Step s = auth.start();
  EXPECT_EQ(s.outcome, Outcome::kOk);
  EXPECT_EQ(s.out, "R\0\0\0\x08\0\0\0\0"s);
}

TEST(ClientAuth, PlainAsksForCleartext) {
  std::string secret = plainSecret();
  ClientAuth auth(AuthType::kPlain, std::string(kUser), &secret);
  ClientAuth::Step s = auth.start();
  EXPECT_EQ(s.outcome, Outcome::kContinue);
  EXPECT_EQ(s.out, "R\0\0\0\x08\0\0\0\x03"s);
}

TEST(ClientAuth, Md5SendsAFreshSalt) {
  std::string secret = md5Secret();
  ClientAuth a(AuthType::kMd5, std::string(kUser), &secret);
  ClientAuth b(AuthType::kMd5, std::string(kUser), &secret);
  ClientAuth::Step sa = a.start();
  ClientAuth::Step sb = b.start();
  ASSERT_EQ(sa.out.size(), 13u);
  EXPECT_EQ(sa.out.substr(0, 9), "R\0\0\0\x0c\0\0\0\x05"s);
  EXPECT_EQ(sb.out.substr(0, 9), "R\0\0\0\x0c\0\0\0\x05"s);
  EXPECT_NE(sa.out.substr(9), sb.out.substr(9));  // 2^-32 chance of a false failure
}

TEST(ClientAuth, Md5WithScramSecretUpgradesToScram) {
  std::string secret = scramSecret();
  ClientAuth auth(AuthType::kMd5, std::string(kUser), &secret);
  ClientAuth::Step s = auth.start();
  EXPECT_EQ(s.outcome, Outcome::kContinue);
  // AuthenticationSASL (10), mechanism list "SCRAM-SHA-256" and the empty terminator.
  EXPECT_EQ(s.out, "R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0"s);
}

TEST(ClientAuth, ScramWithOnlyMd5SecretFails) {
  std::string secret = md5Secret();
  ClientAuth auth(AuthType::kScramSha256, std::string(kUser), &secret);
  Exchange ex = login(auth, kUser, kPassword);
  EXPECT_EQ(ex.request_codes,
            (std::vector<int32_t>{protocol::kAuthSasl, protocol::kAuthSaslContinue}));
  expectPasswordFailure(ex.last, kUser);
}

TEST(ClientAuth, ScramSuccessSetsClientKey) {
  std::string secret(kPencilSecret);
  ClientAuth auth(AuthType::kScramSha256, "user", &secret);
  EXPECT_FALSE(auth.scramClientKey());
  Exchange ex = login(auth, "user", "pencil");
  ASSERT_EQ(ex.last.outcome, Outcome::kOk);
  EXPECT_TRUE(ex.server_signature_ok);
  auto key = auth.scramClientKey();
  ASSERT_TRUE(key);
  EXPECT_EQ(hex(*key), kPencilClientKeyHex);
}

TEST(ClientAuth, ScramFailureLeavesNoClientKey) {
  std::string secret(kPencilSecret);
  ClientAuth auth(AuthType::kScramSha256, "user", &secret);
  Exchange ex = login(auth, "user", "pencil2");
  expectPasswordFailure(ex.last, "user");
  EXPECT_FALSE(auth.scramClientKey());
}

TEST(ClientAuth, UnknownUserGetsAStableMockSalt) {
  // A user with a plain secret and a user that does not exist get the same salt and iteration
  // count, and the same on every attempt, so probing the salt reveals nothing.
  auto serverFirst = [](const std::string* secret) {
    ClientAuth auth(AuthType::kScramSha256, "mallory", secret);
    (void)auth.start();
    protocol::ScramClient client = protocol::ScramClient::fromPassword("x");
    ClientAuth::Step s =
        auth.onPasswordMessage(saslInitialPayload("SCRAM-SHA-256", client.clientFirst()));
    EXPECT_EQ(s.outcome, Outcome::kContinue);
    auto reqs = authRequests(s.out);
    EXPECT_EQ(reqs.size(), 1u);
    if (reqs.empty()) return std::string();
    EXPECT_EQ(reqs[0].code, protocol::kAuthSaslContinue);
    // Drop "r=<nonce>," (random), keep ",s=...,i=...".
    return reqs[0].extra.substr(reqs[0].extra.find(",s="));
  };
  std::string plain = "hunter2";
  std::string a = serverFirst(nullptr);
  EXPECT_EQ(a, serverFirst(nullptr));
  EXPECT_EQ(a, serverFirst(&plain));
  EXPECT_NE(a.find(",i=4096"), std::string::npos) << a;
}

TEST(ClientAuth, MockSaltIsKeyedPerProcessAndPerUser) {
  std::string a = protocol::mockScramSalt("mallory");
  EXPECT_EQ(a.size(), 16u);
  EXPECT_EQ(a, protocol::mockScramSalt("mallory"));
  EXPECT_NE(a, protocol::mockScramSalt("mallorz"));
  // Not derivable from the name alone (the first version used md5(user + "sluice")).
  EXPECT_NE(protocol::base64Encode(a),
            protocol::base64Encode(protocol::md5Hex("mallorysluice").substr(0, 16)));
}

TEST(ClientAuth, Md5UnknownUserRunsTheExchangeKnownUsersGet) {
  for (bool scram : {false, true}) {
    ClientAuth auth(AuthType::kMd5, "nobody", nullptr);
    auth.setUnknownUserScram(scram);
    auto reqs = authRequests(auth.start().out);
    ASSERT_EQ(reqs.size(), 1u);
    EXPECT_EQ(reqs[0].code, scram ? protocol::kAuthSasl : protocol::kAuthMd5);
  }
  // A known user's secret decides, whatever the setting.
  std::string md5 = protocol::md5PasswordSecret("alice", "pw");
  ClientAuth known(AuthType::kMd5, "alice", &md5);
  known.setUnknownUserScram(true);
  auto reqs = authRequests(known.start().out);
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].code, protocol::kAuthMd5);
}

TEST(ClientAuth, UnsupportedAuthTypesFailAtStart) {
  for (AuthType t : {AuthType::kCert, AuthType::kHba}) {
    std::string secret = plainSecret();
    ClientAuth auth(t, std::string(kUser), &secret);
    ClientAuth::Step s = auth.start();
    EXPECT_EQ(s.outcome, Outcome::kFailed);
    EXPECT_EQ(s.error.sqlstate, "0A000");
    EXPECT_NE(s.error.message.find(config::authTypeName(t)), std::string::npos) << s.error.message;
  }
}

// ---- malformed client messages: protocol violations, not password failures ----

ClientAuth::Step firstAnswer(AuthType type, std::string_view payload) {
  std::string secret = plainSecret();
  ClientAuth auth(type, std::string(kUser), &secret);
  (void)auth.start();
  return auth.onPasswordMessage(payload);
}

TEST(ClientAuth, PasswordWithoutNulIsAProtocolViolation) {
  for (AuthType t : {AuthType::kPlain, AuthType::kMd5}) {
    ClientAuth::Step s = firstAnswer(t, kPassword);
    EXPECT_EQ(s.outcome, Outcome::kFailed);
    EXPECT_EQ(s.error.sqlstate, "08P01");
  }
}

TEST(ClientAuth, WrongSaslMechanismIsAProtocolViolation) {
  ClientAuth::Step s =
      firstAnswer(AuthType::kScramSha256, saslInitialPayload("SCRAM-SHA-1", "n,,n=,r=abc"));
  EXPECT_EQ(s.outcome, Outcome::kFailed);
  EXPECT_EQ(s.error.sqlstate, "08P01");
  EXPECT_EQ(s.error.message, "client selected an invalid SASL authentication mechanism");
}

TEST(ClientAuth, ChannelBindingIsRefused) {
  ClientAuth::Step s =
      firstAnswer(AuthType::kScramSha256,
                  saslInitialPayload("SCRAM-SHA-256", "p=tls-server-end-point,,n=,r=abc"));
  EXPECT_EQ(s.outcome, Outcome::kFailed);
  EXPECT_EQ(s.error.sqlstate, "08P01");
}

TEST(ClientAuth, PasswordMessageBeforeStartIsRefused) {
  std::string secret = plainSecret();
  ClientAuth auth(AuthType::kPlain, std::string(kUser), &secret);
  ClientAuth::Step s = auth.onPasswordMessage(cstringPayload(kPassword));
  EXPECT_EQ(s.outcome, Outcome::kFailed);
  EXPECT_EQ(s.error.sqlstate, "08P01");
}

TEST(ClientAuth, RandomPayloadsNeverCrashOrSucceed) {
  std::mt19937 rng(12345);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<int> len(0, 80);
  const AuthType types[] = {AuthType::kPlain, AuthType::kMd5, AuthType::kScramSha256};
  std::string secrets[] = {plainSecret(), md5Secret(), scramSecret()};
  for (int i = 0; i < 300; ++i) {
    AuthType type = types[i % 3];
    ClientAuth auth(type, std::string(kUser), &secrets[(i / 3) % 3]);
    (void)auth.start();
    for (int round = 0; round < 3; ++round) {
      std::string payload;
      int n = len(rng);
      for (int j = 0; j < n; ++j) payload.push_back(char(byte(rng)));
      if (round == 0 && i % 2 == 0) payload = saslInitialPayload("SCRAM-SHA-256", payload);
      ClientAuth::Step s = auth.onPasswordMessage(payload);
      EXPECT_NE(s.outcome, Outcome::kOk) << i;
      if (s.outcome == Outcome::kFailed) break;
    }
  }
}

}  // namespace
}  // namespace sluice::auth
