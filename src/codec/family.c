/* family.c -- the codec's face to Lua: the Message class and the
 * functions luamp.core takes from the codec (encode.c and decode.c make
 * the messages, message.c holds them).
 */
#include "codec.h"

static const lmp_class *const codec_classes[] = {&lmp_message_class, NULL};

static const luaL_Reg codec_funcs[] = {
  {"message", lmp_codec_message},
  {"message_slice", lmp_codec_message_slice},
  {"decode", lmp_codec_decode},
  {"decode_into", lmp_codec_decode_into},
  {"require_modules", lmp_codec_require_modules},
  {NULL, NULL}
};

static void codec_open(void) { lmp_on_fork_parent(lmp_codec_before_fork); }

const lmp_family lmp_codec_family = {codec_classes, codec_funcs, codec_open};
