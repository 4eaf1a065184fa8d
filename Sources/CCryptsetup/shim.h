#ifndef IMGBACKUP_CCRYPTSETUP_SHIM_H
#define IMGBACKUP_CCRYPTSETUP_SHIM_H
#include <stdint.h>
#include <libcryptsetup.h>

// libcryptsetup writes its flags as (UINT32_C(1) << n), which Swift's
// importer does not evaluate. Re-export the ones imgbackup uses as constants.
static const uint32_t imgb_crypt_activate_allow_discards = CRYPT_ACTIVATE_ALLOW_DISCARDS;
static const uint32_t imgb_crypt_activate_keyring_key = CRYPT_ACTIVATE_KEYRING_KEY;
static const uint32_t imgb_crypt_activate_private = CRYPT_ACTIVATE_PRIVATE;
static const uint32_t imgb_crypt_activate_readonly = CRYPT_ACTIVATE_READONLY;
static const uint32_t imgb_crypt_deactivate_deferred = CRYPT_DEACTIVATE_DEFERRED;
static const uint32_t imgb_crypt_pbkdf_no_benchmark = CRYPT_PBKDF_NO_BENCHMARK;
static const int imgb_crypt_any_slot = CRYPT_ANY_SLOT;
static const int imgb_crypt_log_error = CRYPT_LOG_ERROR;

#endif
