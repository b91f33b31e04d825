-- waltd's lease hook inside dnsmasq (dhcp-luascript): each lease event and each finished
-- TFTP transfer becomes one file in waltd's spool, holding the JSON message the exec hook
-- (waltd/dhcp_event.py) writes for the same call.
--
-- dnsmasq runs this in its helper process, one event after another, without starting a
-- program per event: a storm of booting nodes costs no interpreter start per lease.
-- The daemon passes the spool folder and a name prefix in the environment; the prefix is a
-- 20-digit time of dnsmasq's start, so names sort in arrival order across restarts and
-- after the exec hook's names (`<time_ns>-<pid>.json`).
--
-- Each file is written under a dot name (waltd never reads those) and renamed into place,
-- so waltd never reads half a message. Lua has no fsync: a file reaches the disk with the
-- page cache, and an event lost to a power cut within that time comes again with the
-- node's next lease renewal or boot.

local spool = os.getenv("WALTD_EVENT_SPOOL")
local prefix = os.getenv("WALTD_EVENT_PREFIX")
local sequence = 0
-- as the exec hook: dnsmasq's DNSMASQ_USER_CLASS0.. read up to this many
local MAX_USER_CLASSES = 16

-- A UTF-8 lead byte: how many bytes its sequence has and the range of its second byte
-- (the tighter ranges refuse overlong forms, UTF-16 surrogates and code points past
-- U+10FFFF, as Python's decoder does).
local function lead(b)
  if b >= 0xc2 and b <= 0xdf then return 2, 0x80, 0xbf end
  if b == 0xe0 then return 3, 0xa0, 0xbf end
  if (b >= 0xe1 and b <= 0xec) or b == 0xee or b == 0xef then return 3, 0x80, 0xbf end
  if b == 0xed then return 3, 0x80, 0x9f end
  if b == 0xf0 then return 4, 0x90, 0xbf end
  if b >= 0xf1 and b <= 0xf3 then return 4, 0x80, 0xbf end
  if b == 0xf4 then return 4, 0x80, 0x8f end
  return nil
end

-- The code point of the UTF-8 sequence at `i` of `s` and its length, or nil when none
-- starts there.
local function decode(s, i)
  local size, low, high = lead(s:byte(i))
  if size == nil or i + size - 1 > #s then return nil end
  local second = s:byte(i + 1)
  if second < low or second > high then return nil end
  local code = s:byte(i) & (0xff >> (size + 1))
  for k = 1, size - 1 do
    local c = s:byte(i + k)
    if c < 0x80 or c > 0xbf then return nil end
    code = (code << 6) | (c & 0x3f)
  end
  return code, size
end

local SHORT = { [0x22] = '\\"', [0x5c] = "\\\\", [0x0a] = "\\n", [0x0d] = "\\r",
                [0x09] = "\\t", [0x08] = "\\b", [0x0c] = "\\f" }

local function unit(code)
  return string.format("\\u%04x", code)
end

-- `s` as a JSON string of ASCII characters, as Python's exec hook writes the same bytes:
-- valid UTF-8 as its code points, any other byte as the lone surrogate U+DC80..U+DCFF that
-- Python's os.environ decodes it to (its "surrogateescape").
local function json_string(s)
  local out = { '"' }
  local i = 1
  while i <= #s do
    local b = s:byte(i)
    if b < 0x80 then
      if SHORT[b] then
        out[#out + 1] = SHORT[b]
      elseif b < 0x20 or b == 0x7f then
        out[#out + 1] = unit(b)
      else
        out[#out + 1] = string.char(b)
      end
      i = i + 1
    else
      local code, size = decode(s, i)
      if code == nil then
        out[#out + 1] = unit(0xdc00 + b)
        i = i + 1
      elseif code >= 0x10000 then
        code = code - 0x10000
        out[#out + 1] = unit(0xd800 + (code >> 10)) .. unit(0xdc00 + (code & 0x3ff))
        i = i + size
      else
        out[#out + 1] = unit(code)
        i = i + size
      end
    end
  end
  out[#out + 1] = '"'
  return table.concat(out)
end

local function json_value(v)
  if v == nil then return "null" end
  if type(v) == "table" then
    local items = {}
    for k = 1, #v do items[k] = json_value(v[k]) end
    return "[" .. table.concat(items, ", ") .. "]"
  end
  if type(v) == "number" then return string.format("%d", v) end
  return json_string(tostring(v))
end

-- A number dnsmasq gives (a file size) as the digits the exec hook gets on its command line.
local function digits(v)
  if type(v) == "number" then return string.format("%.0f", v) end
  return v
end

-- dnsmasq calls this script unprotected (lua_call): an error raised here would abort its
-- helper process. Failures are written to stderr, which dnsmasq passes on to waltd's log.
local function report(message)
  io.stderr:write("waltd hook: ", message, "\n")
  io.stderr:flush()
end

-- Write one message (`fields`: {name, value} pairs in order) into the spool.
local function spool_message(fields)
  if spool == nil or spool == "" or prefix == nil then
    report("no spool folder is set; event lost")
    return
  end
  local parts = {}
  for k, field in ipairs(fields) do
    parts[k] = json_string(field[1]) .. ": " .. json_value(field[2])
  end
  sequence = sequence + 1
  local name = string.format("%s-%010d.json", prefix, sequence)
  local temp = spool .. "/." .. name .. ".tmp"
  local file, err = io.open(temp, "wb")
  if file == nil then
    report("cannot spool the event: " .. tostring(err))
    return
  end
  local ok, werr = file:write("{" .. table.concat(parts, ", ") .. "}")
  local closed, cerr = file:close()
  if not ok or not closed then
    os.remove(temp)
    report("cannot spool the event: " .. tostring(werr or cerr))
    return
  end
  local moved, merr = os.rename(temp, spool .. "/" .. name)
  if not moved then
    os.remove(temp)
    report("cannot spool the event: " .. tostring(merr))
  end
end

-- Run `f(...)`, reporting instead of raising whatever goes wrong.
local function guarded(f, ...)
  local ok, err = pcall(f, ...)
  if not ok then report("event lost: " .. tostring(err)) end
end

local function on_lease(action, t)
  local classes = {}
  for k = 0, MAX_USER_CLASSES - 1 do
    local value = t["user_class" .. k]
    if value == nil then break end
    classes[#classes + 1] = value
  end
  local hostname = t.hostname
  if hostname == "" then hostname = nil end
  spool_message({
    { "action", action },
    { "time", os.time() },
    { "mac", t.mac_address or "" },
    { "ip", t.ip_address or "" },
    { "hostname", hostname },
    { "vendor_class", t.vendor_class },
    { "user_classes", classes },
    { "interface", t.interface },
  })
end

local function on_tftp(t)
  spool_message({
    { "action", "tftp" },
    { "time", os.time() },
    { "size", digits(t.file_size) or "" },
    { "ip", t.destination_address or "" },
    { "file", t.file_name or "" },
  })
end

function lease(action, t)
  guarded(on_lease, action, t)
end

function tftp(action, t)
  guarded(on_tftp, t)
end
