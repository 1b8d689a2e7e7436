# Addresses of the internet node's test servers (see common.nix).
{
  allowed = "11.0.0.10";
  blocked = "11.0.0.20";
  blockedV6 = "2a00:11::20";
}
