locals {
  # Regions that take traffic from the global names.
  routed = { for name, r in var.regions : name => r if r.routed }
}

# One health check per region: GET https://REGION.<domain>/readyz, 200 only while the
# region should take traffic (503 while draining), from several checker locations.
resource "aws_route53_health_check" "region" {
  for_each = var.regions

  fqdn              = "${each.key}.${var.domain_name}"
  type              = "HTTPS"
  port              = 443
  resource_path     = "/readyz"
  enable_sni        = true
  request_interval  = 10
  failure_threshold = 3
  measure_latency   = true
  regions           = var.health_check_regions

  tags = {
    Name                 = "tickmesh-${each.key}-readyz"
    "tickmesh.io/region" = each.key
  }
}

# REGION.<domain>: the region's own client endpoint, the ws_url / http_url that every
# node.toml lists and that clients fail over between.
resource "aws_route53_record" "region" {
  for_each = var.regions

  zone_id = var.hosted_zone_id
  name    = "${each.key}.${var.domain_name}"
  type    = "A"

  alias {
    name                   = each.value.client_nlb_dns_name
    zone_id                = each.value.client_nlb_zone_id
    evaluate_target_health = true
  }
}

# mesh.REGION.<domain>: the region's QUIC mesh endpoint (mesh.peers[].addr in the other
# regions' node.toml). Peers resolve it at every dial.
resource "aws_route53_record" "mesh" {
  for_each = var.regions

  zone_id = var.hosted_zone_id
  name    = "mesh.${each.key}.${var.domain_name}"
  type    = "A"

  alias {
    name                   = each.value.mesh_nlb_dns_name
    zone_id                = each.value.mesh_nlb_zone_id
    evaluate_target_health = false
  }
}

# latency.<domain>: one answer per routed region; Route 53 answers with the region of
# lowest latency to the resolver among those whose health check passes, so a region
# that fails (or drains) drops out and its clients get the next nearest.
resource "aws_route53_record" "latency" {
  for_each = local.routed

  zone_id         = var.hosted_zone_id
  name            = "latency.${var.domain_name}"
  type            = "A"
  set_identifier  = each.key
  health_check_id = aws_route53_health_check.region[each.key].id

  latency_routing_policy {
    region = each.key
  }

  alias {
    name                   = each.value.client_nlb_dns_name
    zone_id                = each.value.client_nlb_zone_id
    evaluate_target_health = true
  }
}

# ws.<domain>: the name clients start from. PRIMARY: the latency answers. SECONDARY:
# Global Accelerator, used when no latency answer is healthy (for example Route 53's
# checkers cannot reach any region while the accelerator's edge still can).
resource "aws_route53_record" "global_primary" {
  zone_id        = var.hosted_zone_id
  name           = "ws.${var.domain_name}"
  type           = "A"
  set_identifier = "latency"

  failover_routing_policy {
    type = "PRIMARY"
  }

  alias {
    name                   = "latency.${var.domain_name}"
    zone_id                = var.hosted_zone_id
    evaluate_target_health = true
  }

  depends_on = [aws_route53_record.latency]
}

resource "aws_route53_record" "global_secondary" {
  zone_id        = var.hosted_zone_id
  name           = "ws.${var.domain_name}"
  type           = "A"
  set_identifier = "accelerator"

  failover_routing_policy {
    type = "SECONDARY"
  }

  alias {
    name                   = aws_globalaccelerator_accelerator.tickmesh.dns_name
    zone_id                = aws_globalaccelerator_accelerator.tickmesh.hosted_zone_id
    evaluate_target_health = true
  }
}

# ga.<domain>: the accelerator directly (two static anycast addresses), for clients
# that pin addresses in firewalls.
resource "aws_route53_record" "accelerator" {
  zone_id = var.hosted_zone_id
  name    = "ga.${var.domain_name}"
  type    = "A"

  alias {
    name                   = aws_globalaccelerator_accelerator.tickmesh.dns_name
    zone_id                = aws_globalaccelerator_accelerator.tickmesh.hosted_zone_id
    evaluate_target_health = false
  }
}

# dashboard.<domain>: CloudFront (cdn.tf).
resource "aws_route53_record" "dashboard" {
  for_each = toset(["A", "AAAA"])

  zone_id = var.hosted_zone_id
  name    = "dashboard.${var.domain_name}"
  type    = each.key

  alias {
    name                   = aws_cloudfront_distribution.dashboard.domain_name
    zone_id                = aws_cloudfront_distribution.dashboard.hosted_zone_id
    evaluate_target_health = false
  }
}
