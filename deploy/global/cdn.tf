# The dashboard (GET /, one HTML page built into the binary) through CloudFront, with
# an origin group: the primary region serves it; on a 5xx or an unreachable origin
# CloudFront asks the failover region. The page opens its WebSocket on the same host
# (wss://dashboard.<domain>/v1/ws), which goes through the same origin group uncached.
# Each origin is the region's public name, so its ACM certificate must also cover
# REGION.<domain> (a *.<domain> certificate does).

data "aws_cloudfront_cache_policy" "disabled" {
  name = "Managed-CachingDisabled"
}

data "aws_cloudfront_origin_request_policy" "all_viewer_except_host" {
  name = "Managed-AllViewerExceptHostHeader"
}

resource "aws_cloudfront_cache_policy" "dashboard" {
  name        = "tickmesh-dashboard"
  comment     = "tickmesh dashboard page: short TTL, so a release shows within minutes"
  min_ttl     = 0
  default_ttl = 30
  max_ttl     = 300

  parameters_in_cache_key_and_forwarded_to_origin {
    enable_accept_encoding_gzip   = true
    enable_accept_encoding_brotli = true
    cookies_config {
      cookie_behavior = "none"
    }
    headers_config {
      header_behavior = "none"
    }
    # The page reads ?token= in the browser; the origin's answer does not depend on it,
    # and leaving it out of the cache key keeps tokens out of CloudFront's cache.
    query_strings_config {
      query_string_behavior = "none"
    }
  }
}

resource "aws_cloudfront_response_headers_policy" "dashboard" {
  name    = "tickmesh-dashboard"
  comment = "Security headers of the tickmesh dashboard"

  security_headers_config {
    strict_transport_security {
      access_control_max_age_sec = 63072000
      include_subdomains         = true
      preload                    = true
      override                   = true
    }
    content_type_options {
      override = true
    }
    frame_options {
      frame_option = "DENY"
      override     = true
    }
    # The page URL carries a token: never send it to another site.
    referrer_policy {
      referrer_policy = "no-referrer"
      override        = true
    }
    xss_protection {
      protection = true
      mode_block = true
      override   = true
    }
  }
}

resource "aws_cloudfront_distribution" "dashboard" {
  enabled         = true
  is_ipv6_enabled = true
  http_version    = "http2and3"
  comment         = "tickmesh dashboard"
  aliases         = ["dashboard.${var.domain_name}"]
  price_class     = "PriceClass_All"
  web_acl_id      = aws_wafv2_web_acl.dashboard.arn

  dynamic "origin" {
    for_each = var.dashboard_origins
    content {
      origin_id           = origin.value
      domain_name         = "${origin.value}.${var.domain_name}"
      connection_attempts = 2
      connection_timeout  = 5

      custom_origin_config {
        http_port                = 80
        https_port               = 443
        origin_protocol_policy   = "https-only"
        origin_ssl_protocols     = ["TLSv1.2"]
        origin_keepalive_timeout = 5
        origin_read_timeout      = 30
      }
    }
  }

  origin_group {
    origin_id = "dashboard"

    failover_criteria {
      status_codes = [500, 502, 503, 504]
    }

    member {
      origin_id = var.dashboard_origins[0]
    }
    member {
      origin_id = var.dashboard_origins[1]
    }
  }

  default_cache_behavior {
    target_origin_id           = "dashboard"
    allowed_methods            = ["GET", "HEAD", "OPTIONS"]
    cached_methods             = ["GET", "HEAD"]
    viewer_protocol_policy     = "redirect-to-https"
    compress                   = true
    cache_policy_id            = aws_cloudfront_cache_policy.dashboard.id
    response_headers_policy_id = aws_cloudfront_response_headers_policy.dashboard.id
  }

  # The dashboard's WebSocket: never cached; query string (token) and WebSocket headers
  # forwarded. The upgrade is a GET, so the origin group's failover applies to it too.
  ordered_cache_behavior {
    path_pattern               = "/v1/ws"
    target_origin_id           = "dashboard"
    allowed_methods            = ["GET", "HEAD", "OPTIONS"]
    cached_methods             = ["GET", "HEAD"]
    viewer_protocol_policy     = "https-only"
    compress                   = false
    cache_policy_id            = data.aws_cloudfront_cache_policy.disabled.id
    origin_request_policy_id   = data.aws_cloudfront_origin_request_policy.all_viewer_except_host.id
    response_headers_policy_id = aws_cloudfront_response_headers_policy.dashboard.id
  }

  restrictions {
    geo_restriction {
      restriction_type = "none"
    }
  }

  viewer_certificate {
    acm_certificate_arn      = var.dashboard_certificate_arn
    ssl_support_method       = "sni-only"
    minimum_protocol_version = "TLSv1.2_2021"
  }

  logging_config {
    bucket          = "${var.log_bucket_name}.s3.amazonaws.com"
    prefix          = "cloudfront/dashboard/"
    include_cookies = false
  }
}
