output "accelerator_ips" {
  description = "The accelerator's two static anycast addresses (ga.<domain>)."
  value       = flatten([for s in aws_globalaccelerator_accelerator.tickmesh.ip_sets : s.ip_addresses])
}

output "global_name" {
  description = "The name clients start from."
  value       = "ws.${var.domain_name}"
}

output "dashboard_url" {
  description = "The dashboard through CloudFront."
  value       = "https://dashboard.${var.domain_name}/"
}

output "health_check_ids" {
  description = "Route 53 health check per region (for alarms and DR drills)."
  value       = { for k, h in aws_route53_health_check.region : k => h.id }
}

output "routed_regions" {
  description = "Regions in the latency answers and the accelerator."
  value       = sort(keys(local.routed))
}
