"""avsync"""
