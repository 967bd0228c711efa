"""actsparse"""
